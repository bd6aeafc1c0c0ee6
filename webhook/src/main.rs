//! `tollgate-webhook`: serve the admission webhook, inject offline, check a policy.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate_webhook::policy::{DEFAULT_POLICY_YAML, Policy};
use tollgate_webhook::server::{ServeConfig, Server};
use tollgate_webhook::workload::{self, ObjectReport};

/// A review is mostly small JSON allocations and frees (tollgate_memory says why this allocator). What a
/// burst of large pods made it hold is handed back once the burst is over (`tollgate_memory::release`).
#[global_allocator]
static ALLOCATOR: tollgate_memory::Allocator = tollgate_memory::Allocator {};

#[derive(Parser)]
#[command(name = "tollgate-webhook", version, about = "Kubernetes mutating admission webhook that hardens analysis pods", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve AdmissionReview v1 over HTTPS (POST /mutate; GET /healthz, /readyz, /metrics).
    Serve(ServeArgs),
    /// Harden Pods and the pod templates of workloads offline; YAML on stdout, changes on stderr.
    Inject {
        /// File with one or more YAML/JSON documents (Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob, List), or - for stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        /// Policy file (default: the embedded policy; see `tollgate-webhook default-policy`).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The namespace of objects that name none: its override in the policy's `namespaces` applies (an
        /// object's own `metadata.namespace` chooses for it).
        #[arg(short = 'n', long, value_name = "NAMESPACE")]
        namespace: Option<String>,
    },
    /// Validate a policy file; every error names its field.
    CheckPolicy {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the embedded default policy, with its documentation.
    DefaultPolicy,
    /// Print the JSON Schema of a policy file (for editors; the Helm chart's policy is checked against it).
    PolicySchema,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain; reloaded when it changes.
    #[arg(long, env = "TOLLGATE_TLS_CERT", value_name = "FILE")]
    tls_cert: PathBuf,
    /// PEM private key; reloaded when it changes.
    #[arg(long, env = "TOLLGATE_TLS_KEY", value_name = "FILE")]
    tls_key: PathBuf,
    /// Policy file; reloaded when it changes (an invalid change is rejected and logged).
    #[arg(long, env = "TOLLGATE_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    /// How often the certificate, key and policy files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = tollgate_api::units::parse_duration)]
    reload_interval: Duration,
    /// On SIGTERM, keep serving this long with /readyz failing and open connections asked to end (HTTP/2
    /// GOAWAY), so the API server dials elsewhere and the endpoints drop this pod before its listener closes.
    #[arg(long, default_value = "5s", value_parser = tollgate_api::units::parse_duration)]
    drain_delay: Duration,
    /// Then give in-flight requests this long to finish.
    #[arg(long, default_value = "15s", value_parser = tollgate_api::units::parse_duration)]
    shutdown_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Log format.
    #[arg(long, value_enum, env = "TOLLGATE_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Write a Kubernetes Event (on the pod's controller, where it has one) for every pod denied, or let through
    /// unhardened in warn mode. Needs API access: the in-cluster ServiceAccount (or KUBECONFIG), allowed to
    /// create events.k8s.io Events in the analysis namespaces. Off: the webhook makes no API call but the one
    /// `--kubernetes-version auto` makes at start.
    #[arg(long, env = "TOLLGATE_EVENTS")]
    events: bool,
    /// The API server's Kubernetes version (`1.32`, `v1.32.3`), whose Pod Security standard the safe sysctls
    /// follow; `auto`: asked of the API server at start (GET /version, which every client may read; the
    /// in-cluster ServiceAccount or KUBECONFIG), and where that fails, the oldest version tollgate supports
    /// (1.30), whose list is the shortest.
    #[arg(long, env = "TOLLGATE_KUBERNETES_VERSION", default_value = "auto", value_parser = parse_kubernetes_version)]
    kubernetes_version: KubernetesVersion,
}

/// `--kubernetes-version`: `auto`, or a minor version.
#[derive(Clone, Copy)]
struct KubernetesVersion(Option<u32>);

/// `auto`, or the minor version of `1.32`, `v1.32`, `v1.32.3`, `1.32+`.
fn parse_kubernetes_version(text: &str) -> Result<KubernetesVersion, String> {
    if text == "auto" {
        return Ok(KubernetesVersion(None));
    }
    let bad = || format!("{text:?} is not a Kubernetes version like 1.32 or v1.32.3 (or auto)");
    let rest = text.strip_prefix('v').unwrap_or(text).strip_prefix("1.").ok_or_else(bad)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map(|minor| KubernetesVersion(Some(minor))).map_err(|_| bad())
}

/// The API server's minor version, from GET /version (`minor` may read `32+` on some distributions).
async fn api_server_minor() -> Result<u32, String> {
    let config = kube::Config::infer().await.map_err(|e| format!("no API server (in-cluster ServiceAccount or KUBECONFIG): {e}"))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let info = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| "GET /version timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let digits: String = info.minor.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().map_err(|_| format!("the API server's minor version {:?} is not a number", info.minor))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inject { file, policy, namespace } => inject(&file, policy.as_ref(), namespace.as_deref()),
        Command::CheckPolicy { file } => check_policy(&file),
        Command::DefaultPolicy => write_stdout(DEFAULT_POLICY_YAML),
        Command::PolicySchema => write_stdout(&format!("{:#}\n", tollgate_webhook::policy::overlay_schema())),
    }
}

/// Print `text` on stdout; a closed pipe (`| head`) or a full disk is an error message, not a panic.
fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_policy(path: Option<&PathBuf>) -> Result<Policy, String> {
    let Some(path) = path else { return Ok(Policy::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Policy::from_yaml(&text).map_err(|e| format!("{}:\n{e}", path.display()))
}

fn check_policy(path: &PathBuf) -> ExitCode {
    match read_policy(Some(path)) {
        Ok(policy) => {
            println!("{}: valid (digest {})", path.display(), policy.digest());
            for namespace in policy.namespaces.keys() {
                let changes = policy.namespace_changes(namespace).unwrap_or_default();
                let changes = if changes.is_empty() { "nothing".to_owned() } else { changes.join("; ") };
                println!("  namespace {namespace} overrides: {changes}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inject(file: &str, policy: Option<&PathBuf>, namespace: Option<&str>) -> ExitCode {
    let policy = match read_policy(policy) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("error: policy {e}");
            return ExitCode::from(2);
        }
    };
    let mut text = String::new();
    let read =
        if file == "-" { std::io::stdin().read_to_string(&mut text).map(|_| ()) } else { std::fs::read_to_string(file).map(|t| text = t) };
    if let Err(e) = read {
        eprintln!("error: {file}: {e}");
        return ExitCode::from(2);
    }
    let result = match workload::inject_in(&policy, namespace, &text) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    for report in &result.reports {
        match report {
            ObjectReport::Hardened { object, changes, notes } => {
                for note in notes {
                    eprintln!("{object}: note: {note}");
                }
                if changes.is_empty() {
                    eprintln!("{object}: already hardened");
                }
                for change in changes {
                    eprintln!("{object}: {change}");
                }
            }
            ObjectReport::Skipped { object, reason } => eprintln!("{object}: skipped ({reason})"),
            ObjectReport::Denied { object, denial } => eprintln!("{object}: {denial}"),
            ObjectReport::Invalid { object, error } => eprintln!("{object}: error: {error}"),
        }
    }
    if result.failed() {
        // Print nothing on stdout: a half-hardened stream must not reach `kubectl apply`.
        return ExitCode::FAILURE;
    }
    match result.to_yaml() {
        Ok(yaml) => write_stdout(&yaml),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    if let Err(e) = tollgate_memory::disable_huge_pages() {
        tracing::debug!(error = %e, "cannot disable transparent huge pages");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let config = ServeConfig {
        listen: args.listen,
        policy: args.policy,
        reload_interval: args.reload_interval,
        drain_delay: args.drain_delay,
        shutdown_timeout: args.shutdown_timeout,
        max_connections: args.max_connections,
        release_memory: tollgate_memory::release,
        ..ServeConfig::new(args.tls_cert, args.tls_key)
    };
    runtime.block_on(async {
        let version_unknown = follow_kubernetes_version(args.kubernetes_version.0).await;
        let mut config = config;
        if args.events {
            match events_config().await {
                Ok(events) => config.events = Some(events),
                Err(e) => {
                    tracing::error!(error = %e, "--events: no API server to write Events to (in-cluster ServiceAccount or KUBECONFIG)");
                    return ExitCode::FAILURE;
                }
            }
        }
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let kubernetes = format!("1.{}", tollgate_webhook::harden::rules::kubernetes_minor());
        match server.local_addr() {
            Ok(addr) => match &version_unknown {
                None => tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), kubernetes = %kubernetes, "serving"),
                Some(why) => tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), kubernetes = %kubernetes, kubernetes_unknown = %why, "serving"),
            },
            Err(e) => tracing::warn!(error = %e, "serving on an unknown address"),
        }
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Which Pod Security standard the safe sysctls follow: `minor` when given, else the API server's. Returns why
/// the version is unknown (then the oldest supported one's apply), for the "serving" line.
async fn follow_kubernetes_version(minor: Option<u32>) -> Option<String> {
    let minor = match minor {
        Some(minor) => minor,
        None => match api_server_minor().await {
            Ok(minor) => minor,
            Err(e) => return Some(format!("--kubernetes-version auto: {e}; the safe sysctls are those of the oldest version supported")),
        },
    };
    tollgate_webhook::harden::rules::set_kubernetes_minor(minor);
    None
}

/// Where Events go, and the instance that reports them: the pod's name (the Downward API, or the hostname a pod
/// gets).
async fn events_config() -> Result<(kube::Config, String), kube::config::InferConfigError> {
    let kube_config = kube::Config::infer().await?;
    let instance = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "tollgate-webhook".into());
    Ok((kube_config, instance))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stopping on ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
