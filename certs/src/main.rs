//! `tollgate-certs`: keep tollgate-webhook's certificates valid, as files or Secrets, and the caBundle of
//! its MutatingWebhookConfiguration in step. Idempotent: a re-run keeps valid certificates and renews
//! those near expiry.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use time::{Duration, OffsetDateTime};
use tollgate_certs::{Action, Bundle, Params, Renew, assess, force, issue, trust_bundle};

#[derive(Parser)]
#[command(name = "tollgate-certs", version, about = "Certificates for tollgate-webhook and the caBundle that trusts them", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keep ca.crt, ca.key, tls.crt and tls.key in a directory valid.
    Files {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        names: Names,
    },
    /// Keep the serving Secret (tls.crt, tls.key, ca.crt) and the CA Secret valid, and patch the caBundle.
    Secret {
        #[command(flatten)]
        names: Names,
        /// The serving Secret (type kubernetes.io/tls), mounted by the webhook. Default: <service>-tls.
        #[arg(long)]
        secret: Option<String>,
        /// The Secret holding the CA and its key, mounted by nobody. Default: <service>-ca.
        #[arg(long)]
        ca_secret: Option<String>,
        /// MutatingWebhookConfiguration whose webhooks get the CA bundle as caBundle.
        #[arg(long)]
        webhook_config: Option<String>,
        /// Carry on if the --webhook-config does not exist yet (a Helm pre-install hook runs before it does).
        #[arg(long, requires = "webhook_config")]
        allow_missing_webhook_config: bool,
        /// Renew now, whatever is left: `leaf` (a new serving certificate) or `ca` (a new CA too; the old CA
        /// stays trusted for an hour, while the webhook loads the new certificate).
        #[arg(long, value_enum)]
        renew: Option<RenewArg>,
    },
    /// Delete a MutatingWebhookConfiguration, so that no API request waits on a webhook being removed (the
    /// chart's pre-delete hook runs it before the webhook's pods go).
    Unregister {
        #[arg(long)]
        webhook_config: String,
    },
    /// Set the caBundle of every webhook in a MutatingWebhookConfiguration from a PEM file.
    PatchCaBundle {
        #[arg(long)]
        webhook_config: String,
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RenewArg {
    Leaf,
    Ca,
}

#[derive(Args)]
struct Names {
    /// The webhook's Service name.
    #[arg(long, default_value = "tollgate-webhook")]
    service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "tollgate")]
    namespace: String,
    /// Extra DNS names for the serving certificate.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP addresses for the serving certificate (e.g. 127.0.0.1 for a webhook registered by URL).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Validity of a new serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    leaf_days: i64,
    /// Renew when fewer days than this are left.
    #[arg(long, default_value_t = 30)]
    renew_days: i64,
}

impl Names {
    fn params(&self) -> Params {
        let mut params = Params::new(&self.service, &self.namespace);
        params.extra_dns = self.dns.clone();
        params.ips = self.ips.clone();
        params.leaf_validity = Duration::days(self.leaf_days.max(1));
        params.renew_before = Duration::days(self.renew_days.max(0));
        params
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Keep => "certificates are valid; kept".into(),
        Action::RenewLeaf(why) => format!("renewed the serving certificate ({why})"),
        Action::NewCa(why) => format!("created a new CA and serving certificate ({why})"),
    }
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&temp, path)
}

fn files(dir: &Path, params: &Params) -> Result<String, String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let existing = match (read("ca.crt"), read("ca.key"), read("tls.crt"), read("tls.key")) {
        (Some(ca_cert), Some(ca_key), Some(cert), Some(key)) => Some(Bundle { ca_cert, ca_key, cert, key }),
        _ => None,
    };
    let now = OffsetDateTime::now_utc();
    let action = assess(existing.as_ref(), params, now);
    if let Some(bundle) = issue(&action, existing.as_ref(), params, now).map_err(|e| e.to_string())? {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Key before certificate: a reader that sees the new certificate also finds its key.
        for (name, contents, mode) in [
            ("ca.key", &bundle.ca_key, 0o600),
            ("ca.crt", &bundle.ca_cert, 0o644),
            ("tls.key", &bundle.key, 0o600),
            ("tls.crt", &bundle.cert, 0o644),
        ] {
            write_atomically(&dir.join(name), contents, mode).map_err(|e| format!("{}: {e}", dir.join(name).display()))?;
        }
    }
    Ok(describe(&action))
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn secret(name: &str, namespace: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "tollgate-certs".to_owned())])),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    }
}

async fn store(api: &Api<Secret>, existing: Option<Secret>, wanted: Secret) -> Result<(), String> {
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let result = match existing {
        Some(current) => {
            let mut replacement = wanted;
            replacement.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &replacement).await.map(|_| ())
        }
        None => api.create(&PostParams::default(), &wanted).await.map(|_| ()),
    };
    result.map_err(|e| format!("Secret {name}: {e}"))
}

/// Set every webhook's caBundle of `config` to `ca_pem`. `None`: the configuration does not exist and
/// `missing_ok` said that is fine (a pre-install hook runs before the chart creates it).
async fn patch_ca_bundle(client: kube::Client, config: &str, ca_pem: &str, missing_ok: bool) -> Result<Option<usize>, String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    // Read, change, replace with the resourceVersion: a concurrent writer makes us retry, never lose data.
    for _ in 0..5 {
        let current = api.get_opt(config).await.map_err(|e| format!("MutatingWebhookConfiguration {config}: {e}"))?;
        let Some(mut current) = current else {
            return if missing_ok { Ok(None) } else { Err(format!("MutatingWebhookConfiguration {config} does not exist")) };
        };
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let webhooks = current.webhooks.get_or_insert_with(Vec::new);
        if webhooks.iter().all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle)) {
            return Ok(Some(0));
        }
        for webhook in webhooks.iter_mut() {
            webhook.client_config.ca_bundle = Some(bundle.clone());
        }
        let count = webhooks.len();
        match api.replace(config, &PostParams::default(), &current).await {
            Ok(_) => return Ok(Some(count)),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(format!("MutatingWebhookConfiguration {config}: {e}")),
        }
    }
    Err(format!("MutatingWebhookConfiguration {config}: kept conflicting with other writers"))
}

fn describe_patch(config: &str, patched: Option<usize>) -> String {
    match patched {
        None => format!("caBundle of {config}: not there yet"),
        Some(0) => format!("caBundle of {config}: already current"),
        Some(n) => format!("caBundle of {config}: set on {n} webhook(s)"),
    }
}

/// Which MutatingWebhookConfiguration trusts the CA, and whether it may be missing.
struct WebhookConfig<'a> {
    name: &'a str,
    missing_ok: bool,
}

async fn secrets(
    names: &Names,
    secret_name: &str,
    ca_secret_name: &str,
    webhook_config: Option<WebhookConfig<'_>>,
    renew: Option<Renew>,
) -> Result<String, String> {
    let client = kube::Client::try_default().await.map_err(|e| format!("connecting to the API server: {e}"))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let serving = api.get_opt(secret_name).await.map_err(|e| format!("Secret {secret_name}: {e}"))?;
    let ca = api.get_opt(ca_secret_name).await.map_err(|e| format!("Secret {ca_secret_name}: {e}"))?;
    let existing = match (
        ca.as_ref().and_then(|s| Some((text(s, "tls.crt")?, text(s, "tls.key")?))),
        serving.as_ref().and_then(|s| Some((text(s, "tls.crt")?, text(s, "tls.key")?))),
    ) {
        (Some((ca_cert, ca_key)), Some((cert, key))) => Some(Bundle { ca_cert, ca_key, cert, key }),
        (Some((ca_cert, ca_key)), None) => Some(Bundle { ca_cert, ca_key, cert: String::new(), key: String::new() }),
        _ => None,
    };
    // What the API server trusts now: the serving Secret's ca.crt is the bundle the last run wrote.
    let trusted = serving.as_ref().and_then(|s| text(s, "ca.crt")).unwrap_or_default();
    let params = names.params();
    let now = OffsetDateTime::now_utc();
    let action = force(assess(existing.as_ref(), &params, now), renew);
    let issued = issue(&action, existing.as_ref(), &params, now).map_err(|e| e.to_string())?;
    let new_ca = matches!(action, Action::NewCa(_));
    let bundle = issued.as_ref().or(existing.as_ref()).ok_or("kept certificates exist")?;
    let earlier = match (&existing, new_ca) {
        (Some(replaced), true) => format!("{}\n{trusted}", replaced.ca_cert),
        _ => trusted.clone(),
    };
    let trust = trust_bundle(&bundle.ca_cert, &earlier, now);
    let mut outcome = describe(&action);
    // A new CA is trusted before anything signed by it is served; the old one stays in the bundle until the
    // webhook has loaded the new certificate (tollgate_certs::HANDOVER).
    if new_ca && let Some(config) = &webhook_config {
        let patched = patch_ca_bundle(client.clone(), config.name, &trust, config.missing_ok).await?;
        outcome.push_str(&format!("; {}", describe_patch(config.name, patched)));
    }
    if let Some(issued) = &issued
        && new_ca
    {
        let ca_secret =
            secret(ca_secret_name, &names.namespace, "kubernetes.io/tls", &[("tls.crt", &issued.ca_cert), ("tls.key", &issued.ca_key)]);
        store(&api, ca, ca_secret).await?;
    }
    if issued.is_some() || trusted != trust {
        let serving_secret = secret(
            secret_name,
            &names.namespace,
            "kubernetes.io/tls",
            &[("tls.crt", &bundle.cert), ("tls.key", &bundle.key), ("ca.crt", &trust)],
        );
        store(&api, serving, serving_secret).await?;
    }
    if !new_ca && let Some(config) = &webhook_config {
        let patched = patch_ca_bundle(client, config.name, &trust, config.missing_ok).await?;
        outcome.push_str(&format!("; {}", describe_patch(config.name, patched)));
    }
    Ok(outcome)
}

async fn unregister(config: &str) -> Result<String, String> {
    let client = kube::Client::try_default().await.map_err(|e| format!("connecting to the API server: {e}"))?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    match api.delete(config, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(format!("MutatingWebhookConfiguration {config}: deleted")),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(format!("MutatingWebhookConfiguration {config}: already gone")),
        Err(e) => Err(format!("MutatingWebhookConfiguration {config}: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime starts");
    let result = match &cli.command {
        Command::Files { dir, names } => files(dir, &names.params()),
        Command::Secret { names, secret, ca_secret, webhook_config, allow_missing_webhook_config, renew } => {
            let secret = secret.clone().unwrap_or_else(|| format!("{}-tls", names.service));
            let ca_secret = ca_secret.clone().unwrap_or_else(|| format!("{}-ca", names.service));
            let config = webhook_config.as_deref().map(|name| WebhookConfig { name, missing_ok: *allow_missing_webhook_config });
            let renew = renew.map(|r| match r {
                RenewArg::Leaf => Renew::Leaf,
                RenewArg::Ca => Renew::Ca,
            });
            runtime.block_on(secrets(names, &secret, &ca_secret, config, renew))
        }
        Command::Unregister { webhook_config } => runtime.block_on(unregister(webhook_config)),
        Command::PatchCaBundle { webhook_config, ca_file } => runtime.block_on(async {
            let pem = std::fs::read_to_string(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("{}: no PEM certificate", ca_file.display()));
            }
            let client = kube::Client::try_default().await.map_err(|e| format!("connecting to the API server: {e}"))?;
            let patched = patch_ca_bundle(client, webhook_config, &pem, false).await?;
            Ok(describe_patch(webhook_config, patched))
        }),
    };
    match result {
        Ok(outcome) => {
            println!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
