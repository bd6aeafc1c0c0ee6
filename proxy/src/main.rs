//! `tollgate-proxy`: run the sidecar, check a config file, or check the pod's egress lock.

mod lockcheck;
mod waitready;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tollgate_proxy::admin::Admin;
use tollgate_proxy::client::HttpClient;
use tollgate_proxy::config::{Config, Environment};
use tollgate_proxy::connections::{ConnectionMetrics, Guard, Limits, Listener, QuietLimitErrors};
use tollgate_proxy::drain::Terminate;
use tollgate_proxy::egress::Egress;
use tollgate_proxy::ingress::IngressProxy;
use tollgate_proxy::jwt::Verifier;
use tollgate_proxy::local::LocalGuard;
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::readiness::Readiness;
use tollgate_proxy::routes::AuthMode;
use tollgate_proxy::tokens::TokenSource;

/// pingora's request path makes many small allocations (tollgate_memory says why this allocator).
#[global_allocator]
static ALLOCATOR: tollgate_memory::Allocator = tollgate_memory::Allocator {};

#[derive(Parser)]
#[command(name = "tollgate-proxy", version, about = "The analysis pod's only authenticated way out", long_about = None)]
struct Cli {
    /// Config file (YAML); see the crate's README for every field.
    #[arg(long, env = "TOLLGATE_PROXY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file (with TOLLGATE_* placeholders from the environment); every error names its path.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Check the file as the route table shared by a namespace's pods: a placeholder whose id is not in
        /// the environment gets a sample one, so every route is checked as a pod with both ids sees it.
        #[arg(long)]
        template: bool,
    },
    /// Print the JSON Schema of a config file (for editors; the Helm chart's proxyConfig is checked against it).
    ConfigSchema,
    /// Check, from inside the pod and as a user other than the proxy's, that the egress lock is in place:
    /// that the kernel refuses to send this process's packets out of the pod (UDP and TCP to each target).
    /// The webhook runs it as the init container tollgate-lock-check when its policy requires the lock, so
    /// the pod starts only where the tollgate-cni plugin locked its network namespace. Exits 0 when nothing
    /// can leave, 1 (naming what left) otherwise; never takes much more than a second.
    LockCheck {
        /// Where to try to send (repeatable); default 192.0.2.1:9 and [2001:db8::1]:9, documentation
        /// addresses nothing answers.
        #[arg(long = "target", value_name = "ADDR:PORT")]
        targets: Vec<SocketAddr>,
    },
    /// Wait until this pod's proxy is ready (its admin listener's /readyz answers 200, asked on loopback
    /// every 20 ms). The webhook runs it as the sidecar's postStart hook, so the app starts as soon as the
    /// proxy is ready. Exits 0 once ready, 1 after --timeout.
    WaitReady {
        /// The proxy's admin listener (its port is asked on loopback).
        #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", default_value = "0.0.0.0:15021", value_name = "ADDR:PORT")]
        admin: SocketAddr,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
    },
}

/// JSON lines on stderr, filtered by `TOLLGATE_LOG` (default `info`); the audit lines follow the same filter
/// (target `tollgate_proxy::audit`, see [`tollgate_proxy::audit`]).
fn init_logs() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(QuietLimitErrors.with_filter(QuietLimitErrors::filter()))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).json().flatten_event(true).with_filter(filter))
        .init();
    tollgate_proxy::audit::init();
}

fn load(path: &PathBuf, env: &Environment) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Config::load(&text, env).map_err(|e| format!("{}:\n{e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::LockCheck { targets }) = &cli.command {
        init_logs();
        let defaults = || lockcheck::DEFAULT_TARGETS.iter().map(|t| t.parse().expect("literal address")).collect();
        let targets = if targets.is_empty() { defaults() } else { targets.clone() };
        return lockcheck::run(&targets);
    }
    if let Some(Command::WaitReady { admin, timeout }) = &cli.command {
        return waitready::run(*admin, std::time::Duration::from_secs(*timeout));
    }
    if let Some(Command::ConfigSchema) = &cli.command {
        use std::io::Write;
        // A closed pipe (`| head`) is not worth a panic.
        return match writeln!(std::io::stdout().lock(), "{:#}", tollgate_proxy::config::schema()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: writing to stdout: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::CheckConfig { file, template }) = cli.command {
        let mut env = Environment::from_process();
        if template {
            env.analysis_id.get_or_insert_with(|| "sample-analysis".to_owned());
            env.project_id.get_or_insert_with(|| "sample-project".to_owned());
        }
        return match load(&file, &env) {
            Ok(config) => {
                let how = if template { " as a template, ids filled in" } else { "" };
                println!("{}: valid{how} ({} routes)", file.display(), config.routes.len());
                for d in &config.disabled {
                    println!("  {} (route {:?}) is left out: it needs {}, which is not set", d.path, d.route, d.missing);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logs();
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (or use a subcommand; see --help)");
        return ExitCode::from(2);
    };
    let config = match load(&path, &Environment::from_process()) {
        Ok(config) => Arc::new(config),
        Err(e) => {
            tracing::error!(error = %e, "invalid config");
            return ExitCode::FAILURE;
        }
    };
    if let Some(extra) = &config.extra_ca_file
        && let Err(e) = trust_extra_cas(extra)
    {
        tracing::error!(error = %e, "tls.extraCaFile");
        return ExitCode::FAILURE;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// Make every TLS client in the process (pingora's upstream connector and ours) trust the system roots
/// plus the extra bundle: rustls-native-certs loads `SSL_CERT_FILE` and `SSL_CERT_DIR` instead of the
/// platform store, so point the file at the bundle and the directories at the platform's.
fn trust_extra_cas(extra: &std::path::Path) -> Result<(), String> {
    let pem = std::fs::read(extra).map_err(|e| format!("{}: {e}", extra.display()))?;
    HttpClient::new(Some(&pem)).map_err(|e| format!("{}: {e}", extra.display()))?;
    // Whatever the roots would have been — an SSL_CERT_FILE/SSL_CERT_DIR already set, or the platform's —
    // keep them by directory, since the file slot goes to the extra bundle.
    let probe = openssl_probe::probe();
    let mut dirs: Vec<PathBuf> = std::env::var_os("SSL_CERT_DIR").map(|d| std::env::split_paths(&d).collect()).unwrap_or_default();
    let existing_file = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    dirs.extend(existing_file.as_ref().and_then(|f| f.parent()).map(PathBuf::from));
    dirs.extend(probe.cert_dir);
    dirs.extend(probe.cert_file.as_ref().and_then(|f| f.parent()).map(PathBuf::from));
    dirs.dedup();
    let dirs = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
    // SAFETY: called from main before any other thread exists (pingora and tokio start later).
    unsafe {
        std::env::set_var("SSL_CERT_FILE", extra);
        std::env::set_var("SSL_CERT_DIR", dirs);
    }
    Ok(())
}

fn run(config: Arc<Config>) -> Result<(), String> {
    if let Err(e) = tollgate_memory::disable_huge_pages() {
        tracing::debug!(error = %e, "cannot disable transparent huge pages");
    }
    // The extra CAs, if any, are part of the native roots now (see trust_extra_cas).
    let client = HttpClient::new(None)?.via(config.forward_proxy.clone());
    // Each layer gets its own series; the admin listener serves them all.
    // The policy the webhook rendered this proxy from, for `tollgate_proxy_info` (empty when run by hand).
    let policy = std::env::var(tollgate_api::names::ENV_POLICY_DIGEST).unwrap_or_default();
    let metrics = Arc::new(Metrics::for_policy(&policy));
    let guard = Arc::new(LocalGuard::new(metrics.local_destinations.clone()));
    let needs_token = config.routes.iter().any(|r| r.auth == AuthMode::Token);
    let tokens = match (&config.identity, needs_token) {
        (Some(identity), true) => {
            Some(Arc::new(TokenSource::new(identity.clone(), client.clone(), guard.clone(), metrics.token_fetches.clone())))
        }
        _ => None,
    };

    // After SIGTERM pingora closes the listeners and sleeps grace_period_seconds while requests in flight
    // run on; drain.rs ends the process as soon as none is left, so the grace is only the upper bound. Keep
    // it to the configured grace, well below Kubernetes' 30 s.
    let grace = config.shutdown_grace.as_secs_f64().ceil() as u64;
    let conf =
        ServerConf { grace_period_seconds: Some(grace), graceful_shutdown_timeout_seconds: Some(1), threads: 1, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Named after the listener: pingora names the service's threads so, which is how requests its parser
    // refuses are attributed (refusals.rs). Each listener's connections are bounded (connections.rs); on
    // egress every peer is the pod's own app, so only the listener's cap applies there.
    let limits = config.connections;
    let egress_limits = Limits { max_per_peer: None, ..limits };
    let verifier = config.ingress.as_ref().map(|ingress| Arc::new(Verifier::new(ingress.clone(), client.clone())));
    let draining = Arc::new(AtomicBool::new(false));
    let mut readiness = Readiness::new(draining.clone());
    if let Some(tokens) = tokens.clone() {
        readiness = readiness.require(move || (!tokens.ready()).then_some("waiting for a token"));
    }
    if let Some(verifier) = verifier.clone() {
        readiness = readiness.require(move || (!verifier.ready()).then_some("waiting for the JWKS"));
    }
    let readiness = Arc::new(readiness);
    let egress = Egress::new(config.clone(), tokens.clone(), guard, metrics.egress.clone(), readiness.clone());
    let egress = proxy_service(&server, egress, "egress", egress_limits, &metrics.connections);
    server.add_service(listening(egress, config.egress_listen));

    let admin = Admin { metrics: metrics.clone(), readiness };
    let admin = Service::new("admin".to_owned(), Guard::new(admin, Listener::new("admin", limits, &metrics.connections)));
    server.add_service(listening(admin, config.admin_listen));

    if let Some(verifier) = verifier {
        let ingress =
            IngressProxy::new(verifier.clone(), metrics.requests.clone(), config.ingress_listen, config.credential_headers.clone());
        let ingress = proxy_service(&server, ingress, "ingress", limits, &metrics.connections);
        server.add_service(listening(ingress, config.ingress_listen));
        server.add_service(background_service("jwks", JwksLoader(verifier)));
    }
    if let Some(tokens) = tokens {
        server.add_service(background_service("token refresh", TokenRefresh(tokens)));
    }
    for d in &config.disabled {
        tracing::warn!(path = %d.path, route = %d.route, missing = d.missing, "left out: this pod has no value for a placeholder it needs");
    }
    tracing::info!(egress = %config.egress_listen, admin = %config.admin_listen, routes = config.routes.len(), "starting");
    server.run(RunArgs { shutdown_signal: Box::new(Terminate { draining }) });
    std::process::exit(0)
}

/// One proxy listener's service, named `name`, behind its connection limits. pingora would answer CONNECT
/// with its own 405, unseen by tollgate; it is let through to the request filters instead, which refuse it
/// themselves (405, audited and counted). Nothing is ever tunnelled.
fn proxy_service<P>(
    server: &Server,
    app: P,
    name: &'static str,
    limits: Limits,
    metrics: &ConnectionMetrics,
) -> Service<Guard<HttpProxy<P>>>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, app);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    Service::new(name.to_owned(), Guard::new(proxy, Listener::new(name, limits, metrics)))
}

fn listening<A>(mut service: Service<A>, address: SocketAddr) -> Service<A> {
    service.add_tcp(&address.to_string());
    service
}

/// Loads the JWKS at start (retrying until it succeeds), so the first call does not wait for it, and
/// reloads it every few minutes, so a key the issuer removed stops being trusted.
struct JwksLoader(Arc<Verifier>);

const JWKS_RELOAD: std::time::Duration = std::time::Duration::from_secs(300);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksLoader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let load = async {
            loop {
                let mut backoff = std::time::Duration::from_millis(500);
                while let Err(e) = self.0.refresh(true).await {
                    tracing::warn!(error = %e, retry_in = ?backoff, "JWKS not loaded");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                }
                tokio::time::sleep(JWKS_RELOAD).await;
            }
        };
        tokio::select! {
            _ = load => {}
            _ = shutdown.changed() => {}
        }
    }
}

struct TokenRefresh(Arc<TokenSource>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for TokenRefresh {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        tokio::select! {
            _ = self.0.clone().keep_fresh() => {}
            _ = shutdown.changed() => {}
        }
    }
}
