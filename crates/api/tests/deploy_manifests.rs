//! The deployment files in `deploy/` tell the truth about the binary: every environment variable
//! they set is one the program they start reads, every command they run exists, probes and
//! scrapes ask for paths the service serves on the port it listens on, and the grace periods
//! cover the drain. A copy with mistakes in it (tests/fixtures/deploy-bad) must be caught.
//!
//! What the binary knows comes from the binary: `avatars <args> --help` for commands, the
//! OpenAPI document for paths, `service::Config::VARIABLES` (kept equal to what the
//! configuration reads by a test of its own) and the S3 client for variables, and fal-sim's
//! command-line definition for the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml::Value;

/// The programs the image carries, as the Dockerfile copies them into the runtime stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Avatars,
    FalSim,
}

impl std::fmt::Display for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Avatars => "avatars",
            Self::FalSim => "fal-sim",
        })
    }
}

impl Program {
    fn from_path(path: &str) -> Option<Self> {
        match path.rsplit('/').next()? {
            "avatars" => Some(Self::Avatars),
            "fal-sim" => Some(Self::FalSim),
            _ => None,
        }
    }
}

/// What the checks found, and what they looked at (so a check that examined nothing shows).
#[derive(Debug, Default)]
struct Report {
    problems: Vec<String>,
    checked: Vec<String>,
}

impl Report {
    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }
}

/// The binary's side of the comparison.
struct Binary {
    /// Paths of the OpenAPI document that answer GET.
    get_paths: BTreeSet<String>,
    /// `avatars` invocations already tried, and whether they parsed.
    parsed: Mutex<HashMap<Vec<String>, Result<(), String>>>,
}

impl Binary {
    fn new() -> Self {
        let doc: serde_json::Value =
            serde_json::from_str(&api::openapi_json()).expect("the OpenAPI document is JSON");
        let get_paths = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .filter(|(_, item)| item.get("get").is_some())
            .map(|(path, _)| path.clone())
            .collect();
        Self {
            get_paths,
            parsed: Mutex::default(),
        }
    }

    fn reads(&self, program: Program, name: &str) -> bool {
        match program {
            Program::Avatars => {
                service::Config::VARIABLES.contains(&name)
                    || store::blobs::s3_reads_variable(name)
                    || name == tracing_subscriber::EnvFilter::DEFAULT_ENV
            }
            Program::FalSim => fal_sim::cli::Args::command()
                .get_arguments()
                .any(|arg| arg.get_env().is_some_and(|env| env == name)),
        }
    }

    /// Whether the program accepts `args`: clap parses them all before it acts on a trailing
    /// `--help`, so an unknown subcommand or flag fails.
    fn accepts(&self, program: Program, args: &[String]) -> Result<(), String> {
        match program {
            Program::Avatars => {
                let mut parsed = self.parsed.lock().unwrap();
                parsed
                    .entry(args.to_vec())
                    .or_insert_with(|| {
                        let output = Command::new(env!("CARGO_BIN_EXE_avatars"))
                            .args(args)
                            .arg("--help")
                            .output()
                            .expect("avatars runs");
                        if output.status.success() {
                            Ok(())
                        } else {
                            Err(String::from_utf8_lossy(&output.stderr)
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .to_string())
                        }
                    })
                    .clone()
            }
            Program::FalSim => fal_sim::cli::Args::command()
                .try_get_matches_from(
                    std::iter::once("fal-sim").chain(args.iter().map(String::as_str)),
                )
                .map(|_| ())
                .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string()),
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document in a file, with `<<` merge keys applied.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            // A merged mapping may bring merge keys of its own (an anchor built on another).
            while has_merge_key(&value) {
                value
                    .apply_merge()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `NAME=value` lines of an env file (comments and blank lines skipped).
fn env_file(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').unwrap_or((l, ""));
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

fn string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().filter_map(string).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(n) = text.strip_suffix("ms") {
        return n.parse::<u64>().ok().map(|ms| ms / 1000);
    }
    if let Some(n) = text.strip_suffix('s') {
        return n.parse().ok();
    }
    if let Some(n) = text.strip_suffix('m') {
        return n.parse::<u64>().ok().map(|m| m * 60);
    }
    if let Some(n) = text.strip_suffix('h') {
        return n.parse::<u64>().ok().map(|h| h * 3600);
    }
    text.parse().ok()
}

/// Sizes as ingress-nginx reads them: bytes, or a k/m/g suffix.
fn size_bytes(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (number, unit) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1024),
        'm' => (&text[..text.len() - 1], 1024 * 1024),
        'g' => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (&text[..], 1),
    };
    number.parse::<u64>().ok().map(|n| n * unit)
}

/// The settings an environment gives the service, by its own parser (defaults filled in).
fn config_of(env: &BTreeMap<String, String>) -> Result<service::Config, service::ConfigError> {
    service::Config::from_lookup(|name| env.get(name).cloned())
}

/// The longest a stopping replica may take: SHUTDOWN_DELAY, then the drain of in-flight
/// requests (the longest request the service allows), then SHUTDOWN_WORKER_GRACE.
fn longest_stop(config: &service::Config) -> Duration {
    config.shutdown.delay
        + config
            .http
            .request_timeout
            .max(api::app::LONG_REQUEST_TIMEOUT)
        + config.shutdown.worker_grace
}

/// The Dockerfile: the runtime stage carries only the programs, the entrypoint is one of them,
/// the default command exists, and the exposed port is the one the image's BIND_ADDR names.
struct Image {
    entrypoint: Option<Program>,
    env: BTreeMap<String, String>,
}

fn check_dockerfile(path: &Path, binary: &Binary, report: &mut Report) -> Image {
    let text = read(path).replace("\\\n", " ");
    let mut stages: Vec<Vec<String>> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(line.to_string());
        }
    }
    let runtime = stages.last().cloned().unwrap_or_default();
    let where_ = path.display();
    let instruction = |name: &str| -> Vec<String> {
        runtime
            .iter()
            .filter_map(|l| {
                let (word, rest) = l.split_once(char::is_whitespace)?;
                word.eq_ignore_ascii_case(name)
                    .then(|| rest.trim().to_string())
            })
            .collect()
    };
    let json_list = |text: &str| -> Vec<String> {
        serde_json::from_str::<Vec<String>>(text).unwrap_or_else(|_| {
            text.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };

    let mut copied = BTreeSet::new();
    for copy in instruction("COPY") {
        let target = copy
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string();
        match Program::from_path(&target) {
            Some(_) => {
                copied.insert(target);
            }
            None => report.problem(format!(
                "{where_}: the runtime image copies {target}, which is not a program it runs"
            )),
        }
    }
    let mut env = BTreeMap::new();
    for line in instruction("ENV") {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !binary.reads(Program::Avatars, name) {
                report.problem(format!(
                    "{where_}: ENV {name} is not a variable avatars reads"
                ));
            }
            env.insert(name.to_string(), value.trim_matches('"').to_string());
        }
    }
    if instruction("USER").is_empty()
        || instruction("USER")
            .iter()
            .any(|u| u.starts_with("0") || u.starts_with("root"))
    {
        report.problem(format!(
            "{where_}: the runtime stage must run as a non-root user"
        ));
    }

    let entrypoint = instruction("ENTRYPOINT")
        .last()
        .map(|e| json_list(e))
        .unwrap_or_default();
    let program = entrypoint.first().and_then(|p| {
        if !copied.contains(p) {
            report.problem(format!(
                "{where_}: ENTRYPOINT {p} is not copied into the runtime image"
            ));
        }
        Program::from_path(p)
    });
    match program {
        None => report.problem(format!(
            "{where_}: ENTRYPOINT {entrypoint:?} is not avatars or fal-sim"
        )),
        Some(program) => {
            let mut args: Vec<String> = entrypoint[1..].to_vec();
            if let Some(cmd) = instruction("CMD").last() {
                args.extend(json_list(cmd));
            }
            if let Err(error) = binary.accepts(program, &args) {
                report.problem(format!(
                    "{where_}: the image's command {args:?} is refused: {error}"
                ));
            }
            report
                .checked
                .push(format!("Dockerfile: {program} {args:?}"));
        }
    }
    match config_of(&env) {
        Ok(config) => {
            let port = config.bind_addr.port().to_string();
            if !instruction("EXPOSE").iter().any(|p| {
                p.split_whitespace()
                    .any(|e| e.trim_end_matches("/tcp") == port)
            }) {
                report.problem(format!(
                    "{where_}: EXPOSE does not name port {port}, where the service listens"
                ));
            }
        }
        Err(error) => report.problem(format!("{where_}: {error}")),
    }
    Image {
        entrypoint: program,
        env,
    }
}

/// One container as a manifest runs it.
struct Container<'a> {
    place: String,
    program: Option<Program>,
    args: Vec<String>,
    env_names: Vec<String>,
    spec: &'a Value,
}

fn check_container(container: &Container<'_>, binary: &Binary, report: &mut Report) {
    let Some(program) = container.program else {
        return;
    };
    for name in &container.env_names {
        if !binary.reads(program, name) {
            report.problem(format!(
                "{}: sets {name}, which {program} does not read",
                container.place
            ));
        }
    }
    if let Err(error) = binary.accepts(program, &container.args) {
        report.problem(format!(
            "{}: runs {program} {:?}, which is refused: {error}",
            container.place, container.args
        ));
    }
    report.checked.push(format!(
        "{}: {program} {:?}",
        container.place, container.args
    ));
}

/// Kubernetes: env files and ConfigMaps/Secrets feed `avatars`; pod templates' containers,
/// probes, ports, grace periods, Services, Ingresses and scrape annotations are checked.
fn check_kubernetes(dir: &Path, image: &Image, binary: &Binary, report: &mut Report) {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    // What the ConfigMaps give the service, per file; each must be a valid configuration.
    let mut environments: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut objects = Vec::new();
    for file in &files {
        let place = file.display().to_string();
        match file.extension().and_then(|e| e.to_str()) {
            Some("env") => {
                let vars = env_file(file);
                for (name, _) in &vars {
                    if !binary.reads(Program::Avatars, name) {
                        report
                            .problem(format!("{place}: sets {name}, which avatars does not read"));
                    }
                }
                report
                    .checked
                    .push(format!("{place}: {} variables", vars.len()));
                environments.push((place, vars.into_iter().collect()));
            }
            Some("yaml") | Some("yml") => {
                for doc in documents(file) {
                    objects.push((place.clone(), doc));
                }
            }
            _ => {}
        }
    }
    // The environment every pod gets: the image's, then each overlay's on top of the base's.
    let base_env: BTreeMap<String, String> = image
        .env
        .iter()
        .chain(
            environments
                .iter()
                .filter(|(p, _)| p.contains("/base/"))
                .flat_map(|(_, vars)| vars.iter()),
        )
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut effective: Vec<(String, service::Config)> = Vec::new();
    for (place, vars) in &environments {
        let mut env = base_env.clone();
        env.extend(vars.clone());
        match config_of(&env) {
            Ok(config) => effective.push((place.clone(), config)),
            Err(error) => report.problem(format!("{place}: {error}")),
        }
    }
    if effective.is_empty() {
        match config_of(&base_env) {
            Ok(config) => effective.push((dir.display().to_string(), config)),
            Err(error) => report.problem(format!("{}: {error}", dir.display())),
        }
    }

    let mut container_ports: BTreeMap<String, u64> = BTreeMap::new();
    for (place, object) in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let place = format!("{place}: {kind} {name}");
        match kind {
            "ConfigMap" | "Secret" => {
                for section in ["data", "stringData"] {
                    if let Value::Mapping(map) = &object[section] {
                        for key in map.keys().filter_map(string) {
                            if !binary.reads(Program::Avatars, &key) {
                                report.problem(format!(
                                    "{place}: sets {key}, which avatars does not read"
                                ));
                            }
                        }
                    }
                }
                report.checked.push(place);
            }
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "Pod" => {
                let pod = if kind == "Pod" {
                    object.get("spec")
                } else {
                    object.get("spec").and_then(|s| s.get("template"))
                };
                let Some(pod) = pod else { continue };
                check_pod(
                    &place,
                    pod,
                    image,
                    &effective,
                    binary,
                    report,
                    &mut container_ports,
                );
            }
            _ => {}
        }
    }
    for (place, object) in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let place = format!("{place}: {kind} {name}");
        match kind {
            "Service" => {
                for port in object["spec"]["ports"].as_sequence().into_iter().flatten() {
                    check_port_reference(&place, &port["targetPort"], &container_ports, report);
                }
                report.checked.push(place);
            }
            "Ingress" => {
                for rule in object["spec"]["rules"].as_sequence().into_iter().flatten() {
                    for path in rule["http"]["paths"].as_sequence().into_iter().flatten() {
                        let route = path["path"].as_str().unwrap_or("/");
                        let served = match path["pathType"].as_str() {
                            Some("Exact") => binary.get_paths.contains(route),
                            _ => binary.get_paths.iter().any(|p| {
                                p.starts_with(route.trim_end_matches('/')) || route == "/"
                            }),
                        };
                        if !served {
                            report.problem(format!(
                                "{place}: routes {route}, which the service does not serve"
                            ));
                        }
                        check_port_reference(
                            &place,
                            &path["backend"]["service"]["port"]["name"],
                            &container_ports_for_service(&objects),
                            report,
                        );
                    }
                }
                let annotations = &object["metadata"]["annotations"];
                if let Some(size) =
                    annotations["nginx.ingress.kubernetes.io/proxy-body-size"].as_str()
                {
                    for (from, config) in &effective {
                        let upload =
                            u64::from(config.photos.max_photos) * config.photos.max_photo_bytes;
                        if size_bytes(size).is_none_or(|limit| limit < upload) {
                            report.problem(format!(
                                "{place}: proxy-body-size {size} is below one full photo upload \
                                 ({upload} bytes with {from})"
                            ));
                        }
                    }
                }
                report.checked.push(place);
            }
            _ => {}
        }
    }
}

/// Named Service ports (the Ingress backends refer to these).
fn container_ports_for_service(objects: &[(String, Value)]) -> BTreeMap<String, u64> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Service")
        .flat_map(|(_, o)| {
            o["spec"]["ports"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["port"].as_u64()?)))
        .collect()
}

fn check_port_reference(
    place: &str,
    port: &Value,
    ports: &BTreeMap<String, u64>,
    report: &mut Report,
) {
    match port {
        Value::String(name) if !ports.contains_key(name) => report.problem(format!(
            "{place}: refers to port {name:?}, which no container names"
        )),
        Value::Number(n) if !ports.values().any(|p| Some(*p) == n.as_u64()) => report.problem(
            format!("{place}: refers to port {n}, which no container opens"),
        ),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn check_pod(
    place: &str,
    pod: &Value,
    image: &Image,
    effective: &[(String, service::Config)],
    binary: &Binary,
    report: &mut Report,
    container_ports: &mut BTreeMap<String, u64>,
) {
    let spec = &pod["spec"];
    let mut serves = false;
    for section in ["initContainers", "containers"] {
        for c in spec[section].as_sequence().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or_default();
            let command = strings(&c["command"]);
            let program = match command.first() {
                Some(path) => Program::from_path(path),
                None => image.entrypoint,
            };
            let mut args: Vec<String> = command.iter().skip(1).cloned().collect();
            args.extend(strings(&c["args"]));
            let env_names = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .collect();
            let container = Container {
                place: format!("{place} {section} {cname}"),
                program,
                args,
                env_names,
                spec: c,
            };
            check_container(&container, binary, report);
            if container.program == Some(Program::Avatars)
                && container.args.first().map(String::as_str) == Some("serve")
            {
                serves = true;
                check_serving_container(&container, effective, binary, report, container_ports);
            }
        }
    }
    if serves {
        if let Some(grace) = spec["terminationGracePeriodSeconds"].as_u64() {
            for (from, config) in effective {
                let needed = longest_stop(config).as_secs();
                if grace <= needed {
                    report.problem(format!(
                        "{place}: terminationGracePeriodSeconds {grace} does not cover a stop \
                         (SHUTDOWN_DELAY + the longest request + SHUTDOWN_WORKER_GRACE = {needed} s \
                         with {from})"
                    ));
                }
            }
        }
        if let Value::Mapping(annotations) = &pod["metadata"]["annotations"] {
            if let Some(path) = annotations
                .get("prometheus.io/path")
                .and_then(Value::as_str)
            {
                if !binary.get_paths.contains(path) {
                    report.problem(format!(
                        "{place}: Prometheus scrapes {path}, which the service does not serve"
                    ));
                }
            }
            if let Some(port) = annotations.get("prometheus.io/port").and_then(string) {
                for (from, config) in effective {
                    if port != config.bind_addr.port().to_string() {
                        report.problem(format!(
                            "{place}: Prometheus scrapes port {port}, the service listens on {} \
                             (with {from})",
                            config.bind_addr.port()
                        ));
                    }
                }
            }
        }
    }
}

fn check_serving_container(
    container: &Container<'_>,
    effective: &[(String, service::Config)],
    binary: &Binary,
    report: &mut Report,
    container_ports: &mut BTreeMap<String, u64>,
) {
    let place = &container.place;
    let spec = container.spec;
    let mut ports = BTreeMap::new();
    for port in spec["ports"].as_sequence().into_iter().flatten() {
        let number = port["containerPort"].as_u64().unwrap_or_default();
        ports.insert(
            port["name"].as_str().unwrap_or_default().to_string(),
            number,
        );
        for (from, config) in effective {
            if number != u64::from(config.bind_addr.port()) {
                report.problem(format!(
                    "{place}: opens port {number}, the service listens on {} (with {from})",
                    config.bind_addr.port()
                ));
            }
        }
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &spec[probe]["httpGet"];
        if get.is_null() {
            if !spec[probe].is_null() {
                report.problem(format!("{place}: {probe} is not an HTTP probe"));
            }
            continue;
        }
        let path = get["path"].as_str().unwrap_or("/");
        if !binary.get_paths.contains(path) {
            report.problem(format!(
                "{place}: {probe} asks for {path}, which the service does not serve"
            ));
        }
        check_port_reference(&format!("{place} {probe}"), &get["port"], &ports, report);
    }
    container_ports.extend(ports);
}

/// Compose: every service started from the image, with its environment, command, published
/// port and stop grace period; and the demo's interpolation file.
fn check_compose(dir: &Path, image: &Image, binary: &Binary, report: &mut Report) -> Option<u16> {
    let path = dir.join("compose.yaml");
    let file = documents(&path).into_iter().next()?;
    let place = path.display().to_string();
    let mut listen_port = None;
    for (name, service) in file["services"].as_mapping().into_iter().flatten() {
        let name = string(name).unwrap_or_default();
        let uses_image = service["build"].is_mapping()
            || service["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("avatars"));
        if !uses_image {
            continue;
        }
        let entrypoint = strings(&service["entrypoint"]);
        let program = match entrypoint.first() {
            Some(path) => Program::from_path(path),
            None => image.entrypoint,
        };
        let mut args: Vec<String> = entrypoint.iter().skip(1).cloned().collect();
        args.extend(strings(&service["command"]));
        let env: BTreeMap<String, String> = match &service["environment"] {
            Value::Mapping(map) => map
                .iter()
                .filter_map(|(k, v)| Some((string(k)?, string(v).unwrap_or_default())))
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(string)
                .map(|item| {
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let container = Container {
            place: format!("{place}: service {name}"),
            program,
            args,
            env_names: env.keys().cloned().collect(),
            spec: service,
        };
        check_container(&container, binary, report);
        if program != Some(Program::Avatars)
            || container.args.first().map(String::as_str) != Some("serve")
        {
            continue;
        }
        // Interpolated values (`${...}`) are the operator's; the rest must be a valid setup.
        let mut literal: BTreeMap<String, String> = image.env.clone();
        literal.extend(env.into_iter().filter(|(_, v)| !v.contains("${")));
        let config = match config_of(&literal) {
            Ok(config) => config,
            Err(error) => {
                report.problem(format!("{}: {error}", container.place));
                continue;
            }
        };
        let port = config.bind_addr.port();
        listen_port = Some(port);
        for published in strings(&service["ports"]) {
            let target = published.rsplit(':').next().unwrap_or_default();
            if target.trim_end_matches("/tcp") != port.to_string() {
                report.problem(format!(
                    "{}: publishes container port {target}, the service listens on {port}",
                    container.place
                ));
            }
        }
        let needed = longest_stop(&config).as_secs();
        let grace = service["stop_grace_period"].as_str();
        if grace.and_then(seconds).is_none_or(|grace| grace <= needed) {
            report.problem(format!(
                "{}: stop_grace_period {} does not cover a stop ({needed} s)",
                container.place,
                grace.unwrap_or("(unset, 10 s)")
            ));
        }
    }
    let demo = dir.join("demo.env");
    if demo.exists() {
        for (name, _) in env_file(&demo) {
            if !name.starts_with("COMPOSE_") && !binary.reads(Program::Avatars, &name) {
                report.problem(format!(
                    "{}: sets {name}, which avatars does not read",
                    demo.display()
                ));
            }
        }
    }
    listen_port
}

/// Prometheus scrapes the metrics path on the port the compose replicas listen on.
fn check_prometheus(dir: &Path, port: Option<u16>, binary: &Binary, report: &mut Report) {
    let path = dir.join("prometheus/prometheus.yml");
    let Some(config) = documents(&path).into_iter().next() else {
        report.problem(format!("{}: missing", path.display()));
        return;
    };
    for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
        let place = format!(
            "{}: job {}",
            path.display(),
            job["job_name"].as_str().unwrap_or_default()
        );
        let metrics = job["metrics_path"].as_str().unwrap_or("/metrics");
        if !binary.get_paths.contains(metrics) {
            report.problem(format!(
                "{place}: scrapes {metrics}, which the service does not serve"
            ));
        }
        let mut ports: Vec<u64> = job["dns_sd_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|d| d["port"].as_u64())
            .collect();
        for statics in job["static_configs"].as_sequence().into_iter().flatten() {
            ports.extend(
                strings(&statics["targets"])
                    .iter()
                    .filter_map(|t| t.rsplit(':').next()?.parse::<u64>().ok()),
            );
        }
        if let Some(port) = port {
            for scraped in ports {
                if scraped != u64::from(port) {
                    report.problem(format!(
                        "{place}: scrapes port {scraped}, the service listens on {port}"
                    ));
                }
            }
        }
        report.checked.push(place);
    }
}

fn check(dir: &Path) -> Report {
    let binary = Binary::new();
    let mut report = Report::default();
    let image = check_dockerfile(&dir.join("Dockerfile"), &binary, &mut report);
    let port = check_compose(dir, &image, &binary, &mut report);
    check_prometheus(dir, port, &binary, &mut report);
    check_kubernetes(&dir.join("k8s"), &image, &binary, &mut report);
    report
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_deployment_files_match_the_binary() {
    let report = check(&repository().join("deploy"));
    assert!(
        report.problems.is_empty(),
        "deploy/ disagrees with the binary:\n{}",
        report.problems.join("\n")
    );
    // Everything that runs the image was looked at.
    let checked = report.checked.join("\n");
    for expected in [
        "Dockerfile: avatars [\"serve\"]",
        "service migrate: avatars [\"migrate\"]",
        "service avatars: avatars [\"serve\"]",
        "service fal-sim: fal-sim [\"--bind\", \"0.0.0.0:9000\"]",
        "Deployment avatars initContainers migrate: avatars [\"migrate\"]",
        "Deployment avatars containers avatars: avatars [\"serve\"]",
        "Ingress avatars-events",
        "Secret avatars-secrets",
        "prometheus.yml: job avatars",
    ] {
        assert!(
            checked.contains(expected),
            "{expected} was not checked; checked:\n{checked}"
        );
    }
    let env_files = report
        .checked
        .iter()
        .filter(|c| c.ends_with(" variables"))
        .count();
    assert_eq!(env_files, 3, "base, dev and prod settings:\n{checked}");
}

#[test]
fn mistakes_in_the_deployment_files_are_caught() {
    let report = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deploy-bad"));
    let found = report.problems.join("\n");
    let expected = [
        // Dockerfile
        "the image's command [\"srve\"] is refused",
        "copies /usr/local/bin/xtask, which is not a program it runs",
        // compose
        "service avatars: sets DATABASE_POOL_SIZE, which avatars does not read",
        "service fal-sim: sets FAL_SIM_SPEED, which fal-sim does not read",
        "service fal-sim: runs fal-sim [\"--listen\", \"0.0.0.0:9000\"], which is refused",
        "stop_grace_period 30s does not cover a stop (635 s)",
        // prometheus
        "scrapes /prometheus, which the service does not serve",
        // Kubernetes
        "config.env: sets LOG_LEVEL, which avatars does not read",
        "containers avatars: sets DATABASE_URLL, which avatars does not read",
        "initContainers migrate: runs avatars [\"migrations\"], which is refused",
        "livenessProbe asks for /livez, which the service does not serve",
        "readinessProbe: refers to port \"metrics\", which no container names",
        "opens port 9000, the service listens on 8080",
        "terminationGracePeriodSeconds 60 does not cover a stop",
        "Ingress avatars: routes /api, which the service does not serve",
        "proxy-body-size 10m is below one full photo upload",
    ];
    for expected in expected {
        assert!(
            found.contains(expected),
            "not caught: {expected}\nfound:\n{found}"
        );
    }
    // Nothing else: each mistake is reported once, and nothing right is reported.
    assert_eq!(report.problems.len(), expected.len(), "found:\n{found}");
}
