//! The deployment files agree with the CLI and with each other, so a
//! renamed flag or environment variable, a wrong probe port or a drifted NATS
//! setting breaks a test instead of a production roll-out:
//!
//! - every jetsched container in `deploy/docker-compose.yml` and
//!   `deploy/kubernetes/jetsched.yaml` runs a real subcommand, and its
//!   arguments and every `JETSCHED_*`/`NATS_*` variable it sets parse with the
//!   CLI's own clap definition;
//! - health checks and probes ask the port the service serves on;
//! - `NATS_URL` names all three nodes of the cluster the same files define,
//!   and streams are created with three replicas;
//! - the NATS side (`deploy/nats-cluster.conf`, the Helm values) is a 3-node
//!   cluster with JetStream on files and `sync_interval: always`.
//!
//! No NATS server runs: the files are parsed, and `nats-server -t` checks the
//! cluster config. `docker compose config` runs only where Docker Compose is
//! installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command as Process;

mod natsconf;

use clap::{ArgAction, CommandFactory, Parser};
use jetsched_natsbox::Preference;
use natsconf::{Conf, ConfReader};
use serde::Deserialize as _;
use serde_norway::Value;

/// The jetsched commands that run as services.
const SERVICES: [&str; 3] = ["ticker", "dispatcher", "worker"];
/// Nodes in the cluster, and so replicas of each stream and bucket.
const NODES: usize = 3;
/// Replicas of each jetsched service.
const SERVICE_REPLICAS: u64 = 2;
/// The one-shot command that creates streams and buckets before the services start.
const INIT: &str = "init";
/// The web console: one replica (its sessions live in its memory).
const CONSOLE: &str = "console";

/// The NATS user (and role) a jetsched command runs as.
fn role_of(sub: &str) -> &'static str {
    match sub {
        "ticker" => "ticker",
        "dispatcher" => "dispatcher",
        "worker" => "worker",
        INIT => "admin",
        CONSOLE => "console",
        other => panic!("no role for `jetsched {other}`"),
    }
}

/// A jetsched container connects over TLS (the CA it names is mounted) as
/// the user of its role, with a password that is not in the file.
fn check_secured(c: &Container, mounted: impl Fn(&str) -> bool) {
    let origin = &c.origin;
    let role = role_of(c.args.first().expect("a command"));
    assert_eq!(c.env.get("NATS_USER").cloned().flatten().as_deref(), Some(role), "{origin}: connects as {role}");
    let password = c.env.get("NATS_PASSWORD").unwrap_or_else(|| panic!("{origin}: NATS_PASSWORD"));
    let var = format!("${{JETSCHED_{}_PASSWORD:?", role.to_uppercase());
    assert!(
        password.as_deref().is_none_or(|p| p.starts_with(&var)),
        "{origin}: the password comes from {var}...}} or a Secret, not the file: {password:?}"
    );
    let ca = c.env.get("NATS_CA").cloned().flatten().unwrap_or_else(|| panic!("{origin}: NATS_CA"));
    let dir = ca.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
    assert!(mounted(&ca) || mounted(&dir), "{origin}: {ca} is mounted");
    assert_eq!(c.env.get("NATS_TLS_REQUIRED").cloned().flatten().as_deref(), Some("true"), "{origin}: TLS required");
    for var in ["NATS_TOKEN", "NATS_CREDS", "NATS_NKEY"] {
        assert!(!c.env.contains_key(var), "{origin}: authenticates by its role's user, not {var}");
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML file, with `<<` merge keys applied.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"));
            value.apply_merge().unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    docs.remove(0)
}

/// `value[a][b]...`, or `Null` when any step is missing.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| v.get(*key).unwrap_or(&Value::Null))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().map(|seq| seq.iter().filter_map(text).collect()).unwrap_or_default()
}

/// `2.14.5-alpine` -> (2, 14, 5); missing parts count as 0.
fn image_version(tag: &str) -> (u32, u32, u32) {
    let numbers: Vec<u32> = tag
        .split('-')
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|part| part.parse().unwrap_or_else(|_| panic!("image tag {tag:?} does not start with a version")))
        .collect();
    (numbers[0], numbers.get(1).copied().unwrap_or(0), numbers.get(2).copied().unwrap_or(0))
}

fn port_of(addr: &str) -> u16 {
    let (_, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{addr:?} is not host:port"));
    port.parse().unwrap_or_else(|_| panic!("{addr:?} has no numeric port"))
}

/// `nats://a:4222,nats://b:4222` -> [("a", 4222), ("b", 4222)].
fn seed_list(urls: &str) -> Vec<(String, u16)> {
    urls.split(',')
        .map(|url| {
            let rest = url.trim().strip_prefix("nats://").unwrap_or_else(|| panic!("{url:?} is not nats://host:port"));
            let (host, port) = rest.rsplit_once(':').unwrap_or_else(|| panic!("{url:?} names no port"));
            (host.to_string(), port.parse().unwrap_or_else(|_| panic!("{url:?}: bad port")))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The CLI side: what a service container runs, checked against clap.
// ---------------------------------------------------------------------------

/// One jetsched container as a deployment file describes it.
struct Container {
    /// Where it comes from, for messages.
    origin: String,
    /// The arguments after `jetsched`.
    args: Vec<String>,
    /// Environment variables; `None` for values only known at run time
    /// (Kubernetes `valueFrom`).
    env: BTreeMap<String, Option<String>>,
}

/// The arguments of `jetsched <sub>` that read an environment variable, by
/// variable name (the global ones included).
fn env_args(sub: &str) -> BTreeMap<String, clap::Arg> {
    let cli = jetsched::Cli::command();
    let subcommand = cli.find_subcommand(sub).unwrap_or_else(|| panic!("`jetsched {sub}` is not a subcommand"));
    cli.get_arguments()
        .chain(subcommand.get_arguments())
        .filter_map(|arg| Some((arg.get_env()?.to_str()?.to_string(), arg.clone())))
        .collect()
}

/// The `--http-addr` the image sets (`ENV JETSCHED_HTTP_ADDR=...` in the
/// Dockerfile), if it sets one.
fn dockerfile_http_addr() -> Option<String> {
    read("deploy/Dockerfile")
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .find_map(|kv| kv.strip_prefix("JETSCHED_HTTP_ADDR=").map(str::to_string))
}

/// Checks that the container runs a service subcommand that accepts its
/// arguments and environment; returns the port it serves /readyz on.
fn check_container(c: &Container) -> u16 {
    try_container(c).unwrap_or_else(|err| panic!("{err}"))
}

fn try_container(c: &Container) -> Result<u16, String> {
    let origin = &c.origin;
    let sub = c.args.first().ok_or_else(|| format!("{origin}: no command"))?;
    if !SERVICES.contains(&sub.as_str()) && sub != INIT && sub != CONSOLE {
        return Err(format!("{origin}: runs `jetsched {sub}`, not a service"));
    }
    let readable = env_args(sub);

    // Each variable becomes the flag it stands for, so clap checks its value too.
    let mut argv = vec!["jetsched".to_string(), sub.clone()];
    for (name, value) in &c.env {
        if !(name.starts_with("JETSCHED_") || name.starts_with("NATS_")) {
            continue;
        }
        // `jetsched init` and the console share the services' settings (one
        // ConfigMap); those they have no use for are left out.
        if (sub == INIT || sub == CONSOLE) && !readable.contains_key(name) && env_args("ticker").contains_key(name) {
            continue;
        }
        let arg = readable.get(name).ok_or_else(|| format!("{origin}: `jetsched {sub}` does not read {name}"))?;
        let long = format!("--{}", arg.get_long().ok_or_else(|| format!("{name}: argument without a long flag"))?);
        let Some(value) = value else { continue };
        if c.args.contains(&long) {
            continue; // The flag wins over the variable; both are checked.
        }
        match arg.get_action() {
            ArgAction::SetTrue => {
                if !matches!(value.to_lowercase().as_str(), "" | "false" | "0" | "no" | "off") {
                    argv.push(long);
                }
            }
            _ => {
                argv.push(long);
                argv.push(value.clone());
            }
        }
    }
    argv.extend(c.args[1..].iter().cloned());
    if let Err(err) = jetsched::Cli::try_parse_from(&argv) {
        return Err(format!("{origin}: `{}` is refused:\n{err}", argv.join(" ")));
    }

    if sub == INIT {
        return Ok(0); // serves nothing
    }
    // Where its probes ask: the console's pages, a service's http port.
    let (flag, var, image) = if sub == CONSOLE {
        ("--listen", "JETSCHED_CONSOLE_LISTEN", None)
    } else {
        ("--http-addr", "JETSCHED_HTTP_ADDR", dockerfile_http_addr())
    };
    let flag_value = c.args.iter().position(|a| a == flag).and_then(|i| c.args.get(i + 1).cloned());
    let env_value = c.env.get(var).cloned().flatten();
    let default = readable[var].get_default_values().first().and_then(|v| v.to_str()).map(String::from);
    let addr = flag_value.or(env_value).or(image).or(default).expect("an address to serve on");
    if sub == CONSOLE && (addr.starts_with("127.") || addr.starts_with("localhost")) {
        return Err(format!("{origin}: the console listens on {addr}, which nothing outside its container reaches"));
    }
    Ok(port_of(&addr))
}

#[test]
fn env_args_know_the_variables_of_every_service() {
    // Guards the checks below against passing because nothing was found.
    for sub in SERVICES {
        let names = env_args(sub);
        for name in ["NATS_URL", "NATS_CREDS", "JETSCHED_REPLICAS", "JETSCHED_HTTP_ADDR"] {
            assert!(names.contains_key(name), "`jetsched {sub}` reads {name}");
        }
    }
    assert!(env_args("worker").contains_key("JETSCHED_SLOTS"));
    let made_up = |args: &[&str], env: &[(&str, &str)]| Container {
        origin: "a made-up container".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect(),
    };
    assert_eq!(try_container(&made_up(&["worker"], &[])), Ok(9090));
    let err = try_container(&made_up(&["worker"], &[("JETSCHED_NO_SUCH_THING", "1")])).unwrap_err();
    assert!(err.contains("does not read JETSCHED_NO_SUCH_THING"), "{err}");
    let err = try_container(&made_up(&["worker", "--no-such-flag"], &[])).unwrap_err();
    assert!(err.contains("is refused"), "{err}");
    let err = try_container(&made_up(&["worker"], &[("JETSCHED_SLOTS", "many")])).unwrap_err();
    assert!(err.contains("is refused"), "{err}");
    let err = try_container(&made_up(&["janitor"], &[])).unwrap_err();
    assert!(err.contains("not a service"), "{err}");
    assert_eq!(try_container(&made_up(&["ticker", "--http-addr", "0.0.0.0:9191"], &[])), Ok(9191));
}

/// What the services need to know about the compose cluster's nodes.
struct ComposeCluster {
    /// Node (service) names.
    nodes: BTreeSet<String>,
    /// Client port of every node.
    client_port: u16,
}

/// Checks deploy/nats-cluster.conf and the compose NATS nodes that run it.
fn check_compose_nats(compose: &Value) -> ComposeCluster {
    let conf = ConfReader::parse(&read("deploy/nats-cluster.conf"));
    let sync = conf.text(&["jetstream", "sync_interval"]).expect("nats-cluster.conf: jetstream.sync_interval");
    assert!(sync.eq_ignore_ascii_case("always"), "nats-cluster.conf: sync_interval is {sync:?}, not always");
    let store_dir = conf.text(&["jetstream", "store_dir"]).expect("nats-cluster.conf: jetstream.store_dir");
    let client_port = port_of(conf.text(&["listen"]).expect("nats-cluster.conf: listen"));
    assert!(conf.text(&["tls", "cert_file"]).is_some(), "nats-cluster.conf: TLS on the client port");
    assert_eq!(conf.text(&["cluster", "tls", "verify"]), Some("true"), "nats-cluster.conf: mutual TLS on routes");
    check_users(&conf);
    let monitor_port = port_of(conf.text(&["http"]).expect("nats-cluster.conf: http (monitoring)"));
    let route_port = port_of(conf.text(&["cluster", "listen"]).expect("nats-cluster.conf: cluster.listen"));
    assert!(conf.text(&["cluster", "name"]).is_some(), "nats-cluster.conf: cluster.name");
    let server_name = conf.text(&["server_name"]).expect("nats-cluster.conf: server_name");
    let name_var = server_name.strip_prefix('$').expect("server_name comes from an environment variable per node");
    let Some(Conf::List(routes)) = conf.get(&["cluster", "routes"]) else {
        panic!("nats-cluster.conf: cluster.routes")
    };
    let routes: BTreeSet<(String, u16)> = routes
        .iter()
        .map(|r| match r {
            Conf::Text(url) => seed_list(url).remove(0),
            other => panic!("nats-cluster.conf: route {other:?}"),
        })
        .collect();
    assert_eq!(routes.len(), NODES, "nats-cluster.conf: routes to {NODES} nodes");

    let services = compose["services"].as_mapping().expect("compose: services");
    let mut nodes = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        let image = service["image"].as_str().unwrap_or_default();
        let Some(tag) = image.strip_prefix("nats:") else { continue };
        assert!(
            image_version(tag) >= jetsched_natsbox::MIN_VERSION,
            "compose {name}: {image} is older than nats-server {:?}",
            jetsched_natsbox::MIN_VERSION
        );
        nodes.insert(name.to_string());
        names.insert(text(at(service, &["environment", name_var])).expect("compose: a server name per node"));

        let command = strings(&service["command"]);
        let config = command.iter().position(|a| a == "-c" || a == "--config").map(|i| command[i + 1].clone());
        let config = config.unwrap_or_else(|| panic!("compose {name}: runs with -c <config>"));
        let volumes = strings(&service["volumes"]);
        let mounted = |source: &str, target: &str| {
            volumes.iter().any(|v| {
                let mut parts = v.split(':');
                parts.next().is_some_and(|s| s.ends_with(source)) && parts.next() == Some(target)
            })
        };
        assert!(mounted("nats-cluster.conf", &config), "compose {name}: mounts nats-cluster.conf at {config}");
        assert!(mounted("-data", store_dir), "compose {name}: a volume of its own at {store_dir}");

        assert!(mounted("permissions", "/etc/nats/permissions"), "compose {name}: mounts deploy/permissions");
        for file in ["cert_file", "key_file", "ca_file"] {
            for block in [&["tls"][..], &["cluster", "tls"][..]] {
                let path = conf.text(&[block, &[file]].concat()).unwrap_or_else(|| panic!("{block:?}.{file}"));
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
                assert!(mounted("secrets/tls", dir), "compose {name}: mounts deploy/secrets/tls at {dir} for {path}");
            }
        }
        assert_eq!(strings(&service["env_file"]), [".env"], "compose {name}: role passwords from deploy/.env");
        let check = strings(at(service, &["healthcheck", "test"])).join(" ");
        let url = format!("127.0.0.1:{monitor_port}/healthz?js-enabled-only=true");
        assert!(check.contains(&url), "compose {name}: health check asks {url}, not: {check}");
    }
    assert_eq!(nodes.len(), NODES, "compose: {NODES} NATS nodes");
    assert_eq!(names.len(), NODES, "compose: each node has its own server_name");
    let route_hosts: BTreeSet<String> = routes.iter().map(|(h, _)| h.clone()).collect();
    assert_eq!(route_hosts, nodes, "nats-cluster.conf: routes go to the compose nodes");
    assert!(routes.iter().all(|(_, p)| *p == route_port), "nats-cluster.conf: routes use the cluster port");
    ComposeCluster { nodes, client_port }
}

#[test]
fn compose_runs_a_three_node_cluster_and_two_of_each_service_on_it() {
    let compose = yaml("deploy/docker-compose.yml");
    let cluster = check_compose_nats(&compose);
    let mut replicas: BTreeMap<String, u64> = BTreeMap::new();
    for (name, service) in compose["services"].as_mapping().expect("compose: services") {
        let name = name.as_str().expect("service name");
        if cluster.nodes.contains(name) {
            continue;
        }
        let env: BTreeMap<String, Option<String>> = service["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("compose {name}: environment as a map"))
            .iter()
            .map(|(k, v)| (k.as_str().expect("variable name").to_string(), text(v)))
            .collect();
        let container = Container { origin: format!("compose {name}"), args: strings(&service["command"]), env };
        let mounts = strings(&service["volumes"]);
        check_secured(&container, |path| mounts.iter().any(|m| m.split(':').nth(1) == Some(path)));
        let url = container.env["NATS_URL"].clone().expect("NATS_URL");
        let seeds = seed_list(&url);
        let hosts: BTreeSet<String> = seeds.iter().map(|(h, _)| h.clone()).collect();
        assert_eq!(hosts, cluster.nodes, "compose {name}: NATS_URL lists every node");
        assert!(seeds.iter().all(|(_, p)| *p == cluster.client_port), "compose {name}: NATS_URL uses the client port");
        assert_eq!(container.env["JETSCHED_REPLICAS"].as_deref(), Some("3"), "compose {name}: R3 streams");
        for node in &cluster.nodes {
            assert_eq!(
                at(service, &["depends_on", node, "condition"]).as_str(),
                Some("service_healthy"),
                "compose {name}: waits for {node} to be healthy"
            );
        }
        if container.args.first().map(String::as_str) == Some(INIT) {
            check_container(&container);
            continue;
        }
        assert_eq!(
            at(service, &["depends_on", INIT, "condition"]).as_str(),
            Some("service_completed_successfully"),
            "compose {name}: waits for `jetsched init`"
        );
        let port = check_container(&container);
        *replicas.entry(container.args[0].clone()).or_default() +=
            at(service, &["deploy", "replicas"]).as_u64().unwrap_or(1);
        let check = strings(at(service, &["healthcheck", "test"])).join(" ");
        let tcp = format!("/dev/tcp/127.0.0.1/{port} ");
        assert!(
            check.contains(&tcp) && check.contains("GET /readyz "),
            "compose {name}: health check asks /readyz on port {port}: {check}"
        );
    }
    let mut expected: BTreeMap<String, u64> = SERVICES.iter().map(|s| (s.to_string(), SERVICE_REPLICAS)).collect();
    expected.insert(CONSOLE.to_string(), 1);
    assert_eq!(replicas, expected, "compose: every service runs, two of each, and one console");
}

// ---------------------------------------------------------------------------
// Kubernetes: the Helm values for NATS and jetsched's manifests.
// ---------------------------------------------------------------------------

const HELM_VALUES: &str = "deploy/kubernetes/nats-values.yaml";

#[test]
fn helm_values_ask_for_three_nodes_with_jetstream_on_files_and_sync_always() {
    let values = yaml(HELM_VALUES);
    let config = &values["config"];
    assert_eq!(at(config, &["cluster", "enabled"]).as_bool(), Some(true), "cluster.enabled");
    assert_eq!(at(config, &["cluster", "replicas"]).as_u64(), Some(NODES as u64), "cluster.replicas");
    assert_eq!(at(config, &["jetstream", "enabled"]).as_bool(), Some(true), "jetstream.enabled");
    assert_eq!(at(config, &["jetstream", "fileStore", "enabled"]).as_bool(), Some(true), "fileStore.enabled");
    assert_eq!(at(config, &["jetstream", "fileStore", "pvc", "enabled"]).as_bool(), Some(true), "fileStore.pvc");
    let sync = at(config, &["jetstream", "merge", "sync_interval"]).as_str();
    assert_eq!(sync, Some("always"), "jetstream.merge.sync_interval");
    let tag = at(&values, &["container", "image", "tag"]).as_str().expect("container.image.tag");
    assert!(image_version(tag) >= jetsched_natsbox::MIN_VERSION, "nats image {tag} is too old");
}

#[test]
fn kubernetes_deployments_run_services_with_accepted_settings_and_probes_on_their_port() {
    let values = yaml(HELM_VALUES);
    // Names the chart gives its StatefulSet pods and headless service.
    let fullname = values["fullnameOverride"].as_str().expect("fullnameOverride fixes the chart's names");
    let client_port = at(&values, &["config", "nats", "port"]).as_u64().unwrap_or(4222);
    let pods: BTreeSet<String> = (0..NODES).map(|i| format!("{fullname}-{i}.{fullname}-headless")).collect();

    let docs = yaml_docs("deploy/kubernetes/jetsched.yaml");
    let config_maps: BTreeMap<String, &Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("ConfigMap"))
        .map(|d| (at(d, &["metadata", "name"]).as_str().expect("ConfigMap name").to_string(), &d["data"]))
        .collect();
    let mut seen = BTreeSet::new();
    let workloads = ["Deployment", "StatefulSet", "Job"];
    for deployment in docs.iter().filter(|d| workloads.contains(&d["kind"].as_str().unwrap_or_default())) {
        let name = at(deployment, &["metadata", "name"]).as_str().expect("workload name");
        let kind = deployment["kind"].as_str().unwrap_or_default();
        if kind != "Job" {
            let console = name.ends_with(CONSOLE);
            let want = if console { 1 } else { SERVICE_REPLICAS };
            assert_eq!(at(deployment, &["spec", "replicas"]).as_u64(), Some(want), "{name}: replicas");
        }
        let pod = at(deployment, &["spec", "template", "spec"]);
        let containers = pod["containers"].as_sequence().expect("containers");
        for container in containers {
            let mut env = BTreeMap::new();
            for from in container["envFrom"].as_sequence().into_iter().flatten() {
                let map = at(from, &["configMapRef", "name"]).as_str().expect("envFrom: configMapRef");
                let data = config_maps.get(map).unwrap_or_else(|| panic!("{name}: no ConfigMap {map}"));
                for (k, v) in data.as_mapping().expect("ConfigMap data") {
                    env.insert(k.as_str().expect("key").to_string(), text(v));
                }
            }
            let mut secrets = BTreeMap::new();
            for var in container["env"].as_sequence().into_iter().flatten() {
                let var_name = var["name"].as_str().expect("env name").to_string();
                let secret = at(var, &["valueFrom", "secretKeyRef"]);
                if !secret.is_null() {
                    secrets.insert(var_name.clone(), (text(&secret["name"]), text(&secret["key"])));
                }
                env.insert(var_name, text(&var["value"]));
            }
            let c = Container { origin: format!("{kind} {name}"), args: strings(&container["args"]), env };
            let mounts: Vec<String> = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|m| text(&m["mountPath"]))
                .collect();
            check_secured(&c, |path| mounts.iter().any(|m| m == path));
            let role = role_of(&c.args[0]);
            assert_eq!(
                secrets.get("NATS_PASSWORD"),
                Some(&(Some("jetsched-nats-users".to_string()), Some(role.to_string()))),
                "{name}: NATS_PASSWORD from the Secret jetsched-nats-users, key {role}"
            );
            let port = check_container(&c);

            let seeds = seed_list(c.env["NATS_URL"].as_deref().expect("NATS_URL"));
            let hosts: BTreeSet<String> = seeds.iter().map(|(h, _)| h.clone()).collect();
            assert_eq!(hosts, pods, "{name}: NATS_URL lists the chart's pods");
            assert!(seeds.iter().all(|(_, p)| u64::from(*p) == client_port), "{name}: NATS_URL uses the client port");
            assert_eq!(c.env["JETSCHED_REPLICAS"].as_deref(), Some("3"), "{name}: R3 streams");
            if kind == "Job" {
                assert_eq!(c.args[0], INIT, "{name}: the Job runs `jetsched init`");
                continue;
            }
            seen.insert(c.args[0].clone());

            let named_ports: BTreeMap<String, u64> = container["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["containerPort"].as_u64()?)))
                .collect();
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &container[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{name}: {probe} path");
                let probe_port = match &get["port"] {
                    Value::String(named) => named_ports.get(named).copied(),
                    other => other.as_u64(),
                };
                assert_eq!(probe_port, Some(u64::from(port)), "{name}: {probe} asks the service's http port");
            }
        }
    }
    let expected: BTreeSet<String> = SERVICES.iter().chain([&CONSOLE]).map(|s| s.to_string()).collect();
    assert_eq!(seen, expected, "kubernetes: every service runs, and the console");
}

// ---------------------------------------------------------------------------
// Real tools, where there are.
// ---------------------------------------------------------------------------

#[test]
fn nats_server_accepts_the_cluster_config() {
    let binary = jetsched_natsbox::find_or_install(&workspace_root().join(".jetsched/bin"), Preference::PinnedOnly)
        .expect("nats-server available");
    // The layout compose mounts, with certificates and passwords made here
    // as deploy/make-secrets.sh would.
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["nats-1".to_string()]).unwrap();
    std::fs::write(tls.join("server.pem"), ca.cert.pem()).unwrap();
    std::fs::write(tls.join("server-key.pem"), ca.signing_key.serialize_pem()).unwrap();
    std::fs::write(tls.join("ca.pem"), ca.cert.pem()).unwrap();
    let permissions = dir.path().join("permissions");
    std::fs::create_dir_all(&permissions).unwrap();
    for role in ROLES {
        std::fs::copy(
            workspace_root().join(format!("deploy/permissions/{role}.conf")),
            permissions.join(format!("{role}.conf")),
        )
        .unwrap();
    }
    let config = read("deploy/nats-cluster.conf").replace("/etc/nats/tls/", &format!("{}/", tls.display()));
    let path = dir.path().join("nats-cluster.conf");
    std::fs::write(&path, config).unwrap();
    // -t parses and checks the file without starting (route hosts are not resolved).
    let mut cmd = Process::new(&binary);
    cmd.args(["-t", "-c"]).arg(&path).env("NATS_SERVER_NAME", "nats-1");
    for role in ROLES {
        cmd.env(format!("JETSCHED_{}_PASSWORD", role.to_uppercase()), "not-a-secret");
    }
    let out = cmd.output().expect("run nats-server -t");
    assert!(
        out.status.success(),
        "nats-server -t refused deploy/nats-cluster.conf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the passwords in the environment it refuses to start.
    let out = Process::new(&binary).args(["-t", "-c"]).arg(&path).env("NATS_SERVER_NAME", "nats-1").output().unwrap();
    assert!(!out.status.success(), "the config starts without the role passwords");
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    let compose = Process::new("docker").args(["compose", "version"]).output();
    if !compose.is_ok_and(|out| out.status.success()) {
        eprintln!("note: `docker compose` is not installed here; deploy/docker-compose.yml not checked by it");
        return;
    }
    let mut cmd = Process::new("docker");
    cmd.args(["compose", "-f"]).arg(workspace_root().join("deploy/docker-compose.yml")).args(["config", "-q"]);
    // The passwords deploy/make-secrets.sh writes to deploy/.env.
    for role in ROLES {
        cmd.env(format!("JETSCHED_{}_PASSWORD", role.to_uppercase()), "not-a-secret");
    }
    let out = cmd.output().expect("run docker compose config");
    assert!(out.status.success(), "docker compose config: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------
// Users and permissions: one NATS user per role, exactly `jetsched permissions`.
// ---------------------------------------------------------------------------

/// The roles deploy/ has a user for.
const ROLES: [&str; 7] = ["ticker", "dispatcher", "worker", "admin", "submitter", "function", "console"];

/// `jetsched permissions <role> --format json <args>`, run with the real binary.
fn cli_permissions(role: &str, args: &[String]) -> serde_json::Value {
    let out = Process::new(env!("CARGO_BIN_EXE_jetsched"))
        .args(["permissions", role, "--format", "json"])
        .args(args)
        .env_remove("JETSCHED_PREFIX")
        .output()
        .expect("run jetsched permissions");
    assert!(out.status.success(), "jetsched permissions {role}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A nats-server config value as JSON (`true`/`false` texts as booleans).
fn conf_json(conf: &Conf) -> serde_json::Value {
    match conf {
        Conf::Map(map) => map.iter().map(|(k, v)| (k.clone(), conf_json(v))).collect(),
        Conf::List(items) => items.iter().map(conf_json).collect(),
        Conf::Text(t) if t == "true" => serde_json::Value::Bool(true),
        Conf::Text(t) if t == "false" => serde_json::Value::Bool(false),
        Conf::Text(t) => serde_json::Value::String(t.clone()),
    }
}

/// The worker arguments of `jetsched permissions worker` that cover every
/// worker deploy/ runs: their queues, and their ids (compose's fixed ids,
/// the StatefulSet's pod names).
fn deployed_worker_args() -> Vec<String> {
    let compose = yaml("deploy/docker-compose.yml");
    let mut queues = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (_, service) in compose["services"].as_mapping().expect("services") {
        let args = strings(&service["command"]);
        if args.first().map(String::as_str) != Some("worker") {
            continue;
        }
        let queue = args.iter().position(|a| a == "--queues").map(|i| args[i + 1].clone());
        queues.extend(queue.unwrap_or_else(|| "default".into()).split(',').map(str::to_string));
        ids.insert(text(at(service, &["environment", "JETSCHED_WORKER_ID"])).expect("compose workers have fixed ids"));
    }
    for doc in yaml_docs("deploy/kubernetes/jetsched.yaml") {
        if doc["kind"].as_str() != Some("StatefulSet") {
            continue;
        }
        let name = at(&doc, &["metadata", "name"]).as_str().expect("name");
        let replicas = at(&doc, &["spec", "replicas"]).as_u64().expect("replicas");
        ids.extend((0..replicas).map(|i| format!("{name}-{i}")));
        for c in at(&doc, &["spec", "template", "spec", "containers"]).as_sequence().into_iter().flatten() {
            let args = strings(&c["args"]);
            let queue = args.iter().position(|a| a == "--queues").map(|i| args[i + 1].clone());
            queues.extend(queue.unwrap_or_else(|| "default".into()).split(',').map(str::to_string));
        }
    }
    let join = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>().join(",");
    vec!["--queues".into(), join(queues), "--worker-id".into(), join(ids)]
}

fn role_args(role: &str) -> Vec<String> {
    if role == "worker" { deployed_worker_args() } else { Vec::new() }
}

/// nats-cluster.conf has one user per role, its password from the
/// environment, its permissions from deploy/permissions/<role>.conf.
fn check_users(conf: &Conf) {
    let Some(Conf::List(users)) = conf.get(&["authorization", "users"]) else {
        panic!("nats-cluster.conf: authorization.users")
    };
    let mut seen = BTreeSet::new();
    for user in users {
        let name = user.text(&["user"]).expect("user name");
        assert_eq!(
            user.text(&["password"]),
            Some(format!("$JETSCHED_{}_PASSWORD", name.to_uppercase()).as_str()),
            "nats-cluster.conf: {name}'s password comes from the environment"
        );
        assert_eq!(user.text(&["include"]), Some(format!("permissions/{name}.conf").as_str()), "{name}: permissions");
        seen.insert(name.to_string());
    }
    assert_eq!(seen, ROLES.iter().map(|r| r.to_string()).collect(), "nats-cluster.conf: a user per role");
}

#[test]
fn deploy_permissions_are_what_jetsched_permissions_prints() {
    let values = yaml(HELM_VALUES);
    let helm_users = at(&values, &["config", "merge", "authorization", "users"]).as_sequence().expect("helm users");
    for role in ROLES {
        let expected = cli_permissions(role, &role_args(role));
        let file = ConfReader::parse(&read(&format!("deploy/permissions/{role}.conf")));
        let permissions = file.get(&["permissions"]).unwrap_or_else(|| panic!("{role}.conf: a permissions block"));
        assert_eq!(
            conf_json(permissions),
            expected,
            "deploy/permissions/{role}.conf differs from `jetsched permissions {role}`: run deploy/permissions/regenerate.sh"
        );
        let user = helm_users
            .iter()
            .find(|u| u["user"].as_str() == Some(role))
            .unwrap_or_else(|| panic!("{HELM_VALUES}: a user {role}"));
        let helm: serde_json::Value = serde_json::to_value(&user["permissions"]).unwrap();
        assert_eq!(helm, expected, "{HELM_VALUES}: {role}'s permissions: run deploy/permissions/regenerate.sh");
        let var = format!("JETSCHED_{}_PASSWORD", role.to_uppercase());
        assert_eq!(user["password"].as_str(), Some(format!("<< ${var} >>").as_str()), "{HELM_VALUES}: {role} password");
        let secret = at(&values, &["container", "env", &var, "valueFrom", "secretKeyRef"]);
        assert_eq!(secret["name"].as_str(), Some("jetsched-nats-users"), "{HELM_VALUES}: {var} from the Secret");
        assert_eq!(secret["key"].as_str(), Some(role), "{HELM_VALUES}: {var} key");
    }
    assert_eq!(helm_users.len(), ROLES.len(), "{HELM_VALUES}: one user per role");
    for port in [&["config", "nats", "tls"][..], &["config", "cluster", "tls"][..]] {
        assert_eq!(
            at(&values, &[port, &["enabled"]].concat()).as_bool(),
            Some(true),
            "{HELM_VALUES}: {port:?} enabled"
        );
    }
}

#[test]
fn no_secret_is_committed() {
    let ignored = read(".gitignore");
    for path in ["/deploy/secrets", "/deploy/.env"] {
        assert!(ignored.lines().any(|l| l.trim() == path), ".gitignore keeps {path} out of git");
    }
    let out = Process::new("git").args(["ls-files", "deploy"]).current_dir(workspace_root()).output().unwrap();
    let files = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(files.contains("deploy/nats-cluster.conf"), "git lists deploy/: {files}");
    for file in files.lines() {
        assert!(!file.starts_with("deploy/secrets/") && file != "deploy/.env", "{file} is committed");
        let text = std::fs::read_to_string(workspace_root().join(file)).unwrap_or_default();
        assert!(!text.contains("PRIVATE KEY-----"), "{file} holds a private key");
        for line in text.lines().map(str::trim) {
            let Some(value) = line.strip_prefix("password:").or_else(|| line.strip_prefix("NATS_PASSWORD:")) else {
                continue;
            };
            let value = value.trim();
            assert!(
                value.starts_with('$') || value.starts_with("<< $") || value.starts_with("${"),
                "{file}: a password that is not a reference: {line}"
            );
        }
    }
}
