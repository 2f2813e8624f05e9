//! A real headless Chromium for the console's tests, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/setup-browser` installs
//! them when missing, and this module runs it then). Each [`Browser`] has
//! its own chromedriver on a free port and a fresh profile, and is killed
//! when dropped. The machine has no network beyond loopback: every Chromium
//! feature that would call out is off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::{eventually, within, workspace_root};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs `.ci/setup-browser` (once per test binary) unless chromedriver is there.
fn ensure_installed() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
            return;
        }
        let script = workspace_root().join(".ci/setup-browser");
        let status = std::process::Command::new("bash").arg(&script).status().expect("bash runs");
        assert!(status.success(), "{} failed: chromium and chromium-driver are needed", script.display());
    });
}

/// A headless Chromium with its chromedriver.
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session.
    pub async fn start() -> Browser {
        tokio::task::spawn_blocking(ensure_installed).await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Everything the browser writes (its profile, and the scratch files
        // Chromium keeps under TMPDIR) goes in one temporary directory,
        // removed with the browser.
        let scratch = tempfile::tempdir().unwrap();
        let profile = scratch.path().join("profile");
        // Its own process group: dropping the browser kills chromedriver and
        // every Chromium process it started.
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-extensions".to_string(),
            "--window-size=1400,1000".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_string(), json!({ "binary": CHROMIUM, "args": args }));
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(30, "chromedriver to answer and Chromium to start", || {
            let (caps, url) = (caps.clone(), url.clone());
            async move {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector).capabilities(caps).connect(&url).await.ok()
            }
        })
        .await;
        Browser { client, driver, _scratch: scratch }
    }

    /// Opens `url` and waits for the page's script to be loaded.
    pub async fn goto(&self, url: &str) {
        within(20, "the page to load", self.client.goto(url)).await.unwrap();
    }

    /// The first element matching `css`, waiting up to `secs` for it.
    pub async fn find(&self, secs: u64, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(secs))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {secs}s: {e}"))
    }

    /// The text of the first element matching `css`, waiting up to `secs`
    /// for one (read in one step: live pages replace their parts).
    pub async fn text(&self, secs: u64, css: &str) -> String {
        let script = format!("const e = document.querySelector({}); return e ? e.textContent : null;", json!(css));
        eventually(secs, &format!("an element {css}"), || async { self.js(&script).await.as_str().map(str::to_string) })
            .await
    }

    /// Clicks the first element matching `css`, waiting up to `secs` for
    /// one (again if a live refresh replaced it meanwhile).
    pub async fn click(&self, secs: u64, css: &str) {
        eventually(secs, &format!("a clickable {css}"), || async {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            el.click().await.ok()
        })
        .await
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.unwrap().is_empty()
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Saves a screenshot of the page as docs/img/`name`.png (shown in the docs).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = workspace_root().join("docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}
