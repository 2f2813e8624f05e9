// jetsched console: keeps a page live with server-sent events from /live.
// No framework and no build step. Rows and page parts arrive rendered (and
// escaped) by the server; this script only puts them in place.
(function () {
  "use strict";
  const body = document.body;
  const query = body.dataset.live;
  const mode = body.dataset.refresh;
  const state = document.getElementById("live-state");
  const say = (text) => { if (state) state.textContent = text; };

  // A run's task log: append chunks as they are stored (as text, never markup).
  const logs = document.getElementById("logs");
  if (logs && logs.dataset.run) {
    const text = document.getElementById("log-text");
    const heads = text.querySelectorAll("span.src");
    let lastKey = heads.length ? heads[heads.length - 1].dataset.key : null;
    let next = Number(logs.dataset.next || 1);
    const open = () => {
      const url = "/live/logs?run=" + encodeURIComponent(logs.dataset.run) + "&from=" + next;
      const source = new EventSource(url);
      source.addEventListener("log", (e) => {
        const c = JSON.parse(e.data);
        if (c.seq < next) return;
        next = c.seq + 1;
        const key = c.attempt + "/" + c.source;
        if (key !== lastKey) {
          const head = document.createElement("span");
          head.className = "src";
          head.dataset.key = key;
          head.textContent = "attempt " + c.attempt + " · " + c.source + "\n";
          text.appendChild(head);
          lastKey = key;
        }
        const body = document.createElement("span");
        body.textContent = c.text;
        text.appendChild(body);
        const none = document.getElementById("no-logs");
        if (none) none.remove();
      });
      // Reopen from the next chunk rather than from where the page began.
      source.onerror = () => { source.close(); setTimeout(open, 2000); };
    };
    open();
  }

  if (query === undefined) { say("live: off"); return; }

  // Whether the operator is filling in a form of the live part (a field
  // changed or focused): a refresh would wipe it, so it waits.
  function editing(part) {
    if (!part) return false;
    const active = document.activeElement;
    if (active && active !== body && part.contains(active) && active.matches("input, select, textarea")) return true;
    for (const field of part.querySelectorAll("input, select, textarea")) {
      if (field.type !== "hidden" && field.value !== field.defaultValue) return true;
    }
    return false;
  }

  // Part pages: refetch #live-part at most every 2 s (not while a form in it
  // is being filled in: the next event or tick tries again).
  // A request that comes while one is under way is not dropped: it runs
  // once that one has ended (the change it announces may be newer).
  let timer = null;
  let again = false;
  let last = 0;
  function refreshPart() {
    if (timer) { again = true; return; }
    again = false;
    const wait = Math.max(0, last + 2000 - Date.now());
    timer = setTimeout(async () => {
      last = Date.now();
      if (editing(document.getElementById("live-part"))) { timer = null; return; }
      const url = new URL(location.href);
      url.searchParams.set("part", "1");
      url.searchParams.delete("done");
      try {
        const response = await fetch(url, { cache: "no-store" });
        if (response.ok) {
          const html = await response.text();
          const part = document.getElementById("live-part");
          if (part && !editing(part)) part.outerHTML = html;
          body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
        }
      } catch (e) {
        say("live: refresh failed");
      }
      timer = null;
      if (again) refreshPart();
    }, wait);
  }

  // Row pages: put the event's row on top, replacing the run's older row.
  function addRow(html) {
    const rows = document.getElementById("live-rows");
    if (!rows) return;
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    const row = holder.firstElementChild;
    if (!row) return;
    const run = row.dataset.run;
    if (run) {
      const old = rows.querySelector('tr[data-run="' + CSS.escape(run) + '"]');
      if (old) old.remove();
    }
    row.classList.add("new");
    rows.prepend(row);
    while (rows.children.length > 200) rows.lastElementChild.remove();
    const none = document.getElementById("no-runs");
    if (none) none.remove();
  }

  const events = new EventSource("/live" + (query ? "?" + query : ""));
  events.onopen = () => say("live");
  events.onerror = () => say("live: reconnecting");
  events.addEventListener("run", (e) => {
    if (mode === "rows") addRow(e.data);
    else if (mode === "part") refreshPart();
  });
  events.addEventListener("tick", () => { if (mode === "part") refreshPart(); });
  events.addEventListener("lagged", () => {
    if (mode === "part") refreshPart();
    else say("live: fell behind, reload for the latest");
  });
})();
