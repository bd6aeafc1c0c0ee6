//! A real Kubernetes control plane for tests, like controller-runtime's envtest: etcd and
//! kube-apiserver on 127.0.0.1 with generated certificates and the usual admission plugins (PodSecurity
//! included). No scheduler and no kubelet: pods are admitted and stored, which is what tollgate changes.
//! Everything started is stopped (and its directory removed) when the [`ControlPlane`] is dropped.

pub mod chart_files;
pub mod images;
pub mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tollgate_testkit::{free_port, output_with_stdin, text};

/// Where the upstream binaries are: `TOLLGATE_BIN_DIR`, or what `tests/control-plane/provision.sh` builds.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("control-plane/provision.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("running provision.sh");
    assert!(out.status.success(), "provision.sh failed; see its output above");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A binary of this workspace (built by `cargo build --workspace`, which scripts/test.sh runs first):
/// beside this executable (a binary) or one level up (a test, which lives in deps/).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let candidates = [dir.join(name), dir.parent().unwrap().join(name)];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("{name} is not built next to {}; run `cargo build --workspace` first (scripts/test.sh does)", exe.display())
    })
}

/// A process that is killed when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(name: &str, command: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = command.stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name: name.to_owned(), child, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// etcd + kube-apiserver, and a kubeconfig for an admin (CN=admin, O=system:masters).
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    /// Signs client certificates: users other than the admin ([`ControlPlane::user_kubeconfig`]).
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    // Dropped in this order: the API server before etcd.
    pub apiserver: Process,
    pub etcd: Process,
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // One CA for the API server's serving certificate and for client certificates.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tollgate-e2e-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let serving_key = KeyPair::generate().unwrap();
        let serving =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap().signed_by(&serving_key, &issuer).unwrap();
        let admin_key = KeyPair::generate().unwrap();
        let mut admin_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin_params.distinguished_name.push(DnType::CommonName, "admin");
        admin_params.distinguished_name.push(DnType::OrganizationName, "system:masters");
        let admin = admin_params.signed_by(&admin_key, &issuer).unwrap();
        let sa_key = KeyPair::generate().unwrap();
        write(&d.join("ca.crt"), &ca_cert.pem());
        write(&d.join("apiserver.crt"), &serving.pem());
        write(&d.join("apiserver.key"), &serving_key.serialize_pem());
        write(&d.join("sa.key"), &sa_key.serialize_pem());
        write(&d.join("sa.pub"), &sa_key.public_key_pem());

        let (client_port, peer_port, secure_port) = (free_port(), free_port(), free_port());
        let etcd = Process::start(
            "etcd",
            Command::new(bin.join("etcd")).args([
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
            d.join("etcd.log"),
        );
        let server = format!("https://127.0.0.1:{secure_port}");
        let apiserver = Process::start(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                &format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                &format!("--cert-dir={}", d.join("apiserver-certs").display()),
                &format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
                &format!("--tls-private-key-file={}", d.join("apiserver.key").display()),
                &format!("--client-ca-file={}", d.join("ca.crt").display()),
                &format!("--secure-port={secure_port}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                &format!("--service-account-issuer={server}"),
                &format!("--service-account-key-file={}", d.join("sa.pub").display()),
                &format!("--service-account-signing-key-file={}", d.join("sa.key").display()),
                "--v=0",
            ]),
            d.join("apiserver.log"),
        );

        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let kubeconfig = d.join("kubeconfig");
        write(
            &kubeconfig,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: e2e\n  context: {{ cluster: e2e, user: admin }}\ncurrent-context: e2e\n",
                b64(ca_cert.pem()),
                b64(admin.pem()),
                b64(admin_key.serialize_pem())
            ),
        );
        let plane = ControlPlane { dir, bin, kubeconfig, server, apiserver, etcd, ca: issuer, ca_pem: ca_cert.pem() };
        plane.wait_ready();
        plane
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready:\n{}\n--- etcd:\n{}",
                tail(&self.apiserver.logs()),
                tail(&self.etcd.logs())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A kubeconfig for `user` in `groups`, with a client certificate from the cluster's CA: someone with
    /// only the rights RBAC gives them.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params.distinguished_name.push(DnType::OrganizationName, *group);
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        write(
            &path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: e2e\n  context: {{ cluster: e2e, user: {user} }}\ncurrent-context: e2e\n",
                self.server,
                b64(self.ca_pem.clone()),
                b64(cert.pem()),
                b64(key.serialize_pem())
            ),
        );
        path
    }

    /// kubectl as someone else (a kubeconfig from [`ControlPlane::user_kubeconfig`]).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("kubectl")).arg(format!("--kubeconfig={}", kubeconfig.display())).args(args).output().unwrap()
    }

    /// Run kubectl against this control plane.
    /// The webhook's serving certificate from `dir` (`tls.crt`, `tls.key`) as the Secret
    /// tollgate/tollgate-webhook-tls, where the chart and `tollgate check` look for it.
    pub fn create_serving_secret(&self, dir: &Path) {
        let out = self.kubectl(&[
            "create",
            "secret",
            "tls",
            "tollgate-webhook-tls",
            "-n",
            "tollgate",
            &format!("--cert={}", dir.join("tls.crt").display()),
            &format!("--key={}", dir.join("tls.key").display()),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("kubectl")).arg(format!("--kubeconfig={}", self.kubeconfig.display())).args(args).output().unwrap()
    }

    /// kubectl with `stdin` as input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> std::process::Output {
        self.kubectl_stdin_as(&self.kubeconfig, args, stdin)
    }

    /// kubectl with `stdin` as input, as someone else.
    pub fn kubectl_stdin_as(&self, kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
        let mut kubectl = Command::new(self.bin.join("kubectl"));
        output_with_stdin(kubectl.arg(format!("--kubeconfig={}", kubeconfig.display())).args(args), stdin.as_bytes())
    }

    /// `kubectl apply -f -` of `manifest`, as the admin; it must succeed.
    pub fn apply(&self, manifest: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(out.status.success(), "{}", text(&out));
    }

    pub async fn client(&self) -> kube::Client {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

/// tollgate-webhook as a local process with certificates from tollgate-certs, registered by URL.
pub struct Webhook {
    pub process: Process,
    pub port: u16,
    pub certs: PathBuf,
}

impl Webhook {
    /// What `helm install` of the chart needs to use this webhook (no node here runs the chart's Deployment):
    /// its serving certificate as the Secret tollgate/tollgate-webhook-tls (the namespace must exist), and the
    /// values that point the chart's webhook configuration at it.
    pub fn chart_values(&self, plane: &ControlPlane) -> Vec<String> {
        plane.create_serving_secret(&self.certs);
        [
            "--set",
            "certificates.mode=existingSecret",
            "--set",
            "certificates.existingSecret=tollgate-webhook-tls",
            "--set",
            &format!("webhook.url=https://127.0.0.1:{}/mutate", self.port),
            "--set-file",
            &format!("webhook.caBundle={}", self.certs.join("ca.crt").display()),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    pub fn start(plane: &ControlPlane) -> Webhook {
        let webhook = Webhook::start_unregistered(plane);
        webhook.register(plane);
        webhook
    }

    /// Registered, with `policy` (YAML, merged over the embedded default) instead of the default.
    pub fn start_with_policy(plane: &ControlPlane, policy: &str) -> Webhook {
        let webhook = Webhook::launch(plane, Some(policy), false);
        webhook.register(plane);
        webhook
    }

    pub fn start_unregistered(plane: &ControlPlane) -> Webhook {
        Webhook::launch(plane, None, false)
    }

    /// [`Webhook::start`], writing Events through `plane` (`serve --events`).
    pub fn start_with_events(plane: &ControlPlane) -> Webhook {
        let webhook = Webhook::launch(plane, None, true);
        webhook.register(plane);
        webhook
    }

    fn launch(plane: &ControlPlane, policy: Option<&str>, events: bool) -> Webhook {
        let certs = plane.dir.path().join("webhook-certs");
        let out = Command::new(workspace_bin("tollgate-certs")).args(["files", "--ip", "127.0.0.1", "--dir"]).arg(&certs).output().unwrap();
        assert!(out.status.success(), "tollgate-certs: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let process = Process::start(
            "tollgate-webhook",
            Command::new(workspace_bin("tollgate-webhook"))
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--reload-interval",
                    "200ms",
                    "--drain-delay",
                    "0s",
                    "--tls-cert",
                ])
                .arg(certs.join("tls.crt"))
                .arg("--tls-key")
                .arg(certs.join("tls.key"))
                .args(policy.map(|yaml| {
                    let path = plane.dir.path().join(format!("policy-{port}.yaml"));
                    std::fs::write(&path, yaml).unwrap();
                    format!("--policy={}", path.display())
                }))
                .args(events.then_some("--events"))
                .env("KUBECONFIG", &plane.kubeconfig),
            plane.dir.path().join(format!("webhook-{port}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.logs().contains("\"message\":\"serving\"") {
            assert!(Instant::now() < deadline, "webhook did not start:\n{}", process.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        Webhook { process, port, certs }
    }

    /// Register exactly what `manifests/` ships — the MutatingWebhookConfiguration (every webhook in it,
    /// with its rules, selectors and match conditions) and the ValidatingAdmissionPolicies that guard pods
    /// after admission and require that the webhook saw every pod — with one change: the webhooks call this local process by URL instead of
    /// the in-cluster Service.
    pub fn register(&self, plane: &ControlPlane) {
        let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(self.certs.join("ca.crt")).unwrap());
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let text = std::fs::read_to_string(manifests.join("40-webhook-configuration.yaml")).unwrap();
        let mut configuration: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        for webhook in configuration["webhooks"].as_array_mut().expect("webhooks") {
            let path = webhook["clientConfig"]["service"]["path"].as_str().unwrap_or("/mutate").to_owned();
            webhook["clientConfig"] = serde_json::json!({"url": format!("https://127.0.0.1:{}{path}", self.port), "caBundle": ca});
        }
        let out = plane.kubectl_stdin(&["apply", "-f", "-"], &configuration.to_string());
        assert!(out.status.success(), "registering the webhook: {}", String::from_utf8_lossy(&out.stderr));
        for policy in ["45-pod-guard.yaml", "46-require-hardening.yaml"] {
            let out = plane.kubectl(&["apply", "-f", manifests.join(policy).to_str().unwrap()]);
            assert!(out.status.success(), "{policy}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// A namespace; `analysis` ones are labeled for injection and enforce Pod Security "restricted".
pub fn namespace(plane: &ControlPlane, name: &str, analysis: bool) {
    let labels = if analysis { r#"{"tollgate.dev/inject":"enabled","pod-security.kubernetes.io/enforce":"restricted"}"# } else { "{}" };
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}","labels":{labels}}}}},
{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"default","namespace":"{name}"}}}}]}}"#
    );
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "namespace {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Run `kubectl` (what `run` does) again, for up to 10 s, while it fails only because the webhook's
/// registration (or the API server's view of namespace labels) has not settled yet; its last output.
pub fn settled(mut run: impl FnMut() -> Output) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run();
        let all = text(&out);
        if out.status.success()
            || Instant::now() > deadline
            || !(all.contains("failed calling webhook") || all.contains("connection refused"))
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// RFC 3339 timestamps with a fraction (`2026-11-23T08:00:01.123456789Z`, as `kubectl logs --timestamps`
/// prints them) as seconds since the epoch.
pub mod precise {
    pub fn seconds(text: &str) -> f64 {
        let bad = || -> ! { panic!("not a timestamp: {text}") };
        let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap_or_else(|| bad());
        let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap_or_else(|_| bad())).collect();
        let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
        let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap_or_else(|_| bad())).collect();
        let fraction: f64 = format!("0.{fraction}").parse().unwrap_or_else(|_| bad());
        // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
        let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d[2] - 1;
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
        (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + fraction
    }

    #[test]
    fn timestamps_read_as_seconds() {
        assert_eq!(seconds("1970-01-01T00:00:01.5Z"), 1.5);
        assert_eq!(seconds("2026-11-23T15:20:01Z"), 1_795_447_201.0);
        assert!((seconds("2026-03-01T00:00:00.25Z") - seconds("2026-02-28T23:59:59.75Z") - 0.5).abs() < 1e-6);
    }
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}
