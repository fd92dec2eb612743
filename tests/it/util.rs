//! Test harness: the real router on port 0, and real peers: an HTTP stand-in that answers like a
//! Slack incoming webhook (or any endpoint, scripted per test), and an SMTP server on a TCP port.

use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard::config::ConfigPaths;
use switchboard::delivery::{self, RetryPolicy};
use switchboard::event::Sources;
use switchboard::store::Store;
use switchboard::{Options, StartError};
use warp::Filter;

/// A fixture payload from tests/fixtures/smartlead.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smartlead")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists"))
        .expect("fixture is JSON")
}

/// `switchboard check` of a rules file with one rule `r`, given its part before `actions`
/// (`once: {…}`, `when: {…}`): the exit code and what it printed.
pub fn check_rule(part: &str) -> (Option<i32>, String) {
    check_file(&format!(
        "rules:\n  - name: r\n    {part}\n    actions:\n      - log: {{ message: hi }}\n"
    ))
}

/// `switchboard check` of a rules file: the exit code and what it printed.
pub fn check_file(rules: &str) -> (Option<i32>, String) {
    check_in(tempfile::tempdir().unwrap().path(), rules)
}

/// `switchboard check` of `rules` written to `dir/rules.yaml`, with `dir/templates`.
pub fn check_in(dir: &Path, rules: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--rules", "rules.yaml", "--templates", "templates"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The repository's own shipped file (rules, templates).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One request an HTTP peer received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer: status, body, extra headers.
pub type Answer = (u16, &'static str, Vec<(&'static str, &'static str)>);

/// An HTTP server standing in for Slack (answers `ok` by default) or any endpoint.
pub struct HttpPeer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    delay: Arc<Mutex<Duration>>,
}

impl HttpPeer {
    pub async fn start() -> HttpPeer {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::new(Mutex::new(VecDeque::new()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (r, s, d) = (received.clone(), script.clone(), delay.clone());
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let (r, s, d) = (r.clone(), s.clone(), d.clone());
                    async move {
                        let wait = *d.lock().unwrap();
                        tokio::time::sleep(wait).await;
                        r.lock().unwrap().push(Request {
                            method: method.to_string(),
                            path: path.as_str().to_string(),
                            headers: headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect(),
                            body: String::from_utf8_lossy(&body).to_string(),
                            at: Instant::now(),
                        });
                        let (status, text, extra) =
                            s.lock().unwrap().pop_front().unwrap_or((200, "ok", vec![]));
                        let mut resp = warp::http::Response::builder().status(status);
                        for (k, v) in extra {
                            resp = resp.header(k, v);
                        }
                        resp.body(text.to_string()).unwrap()
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        HttpPeer {
            addr,
            received,
            script,
            delay,
        }
    }

    /// Makes every answer wait this long (a slow endpoint).
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues answers for the next requests (then `200 ok` again).
    pub fn script(&self, answers: Vec<Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn received(&self) -> Vec<Request> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Request> {
        wait_until(
            || self.received().len() >= n,
            &format!("{n} request(s) at {}", self.addr),
        )
        .await;
        self.received()
    }
}

pub async fn wait_until(mut ok: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One email the SMTP server received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A real SMTP server (mailin-embedded) on a local TCP port, recording what it receives.
pub struct SmtpPeer {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

#[derive(Clone)]
struct Recorder {
    mails: Arc<Mutex<Vec<Mail>>>,
    current: Option<Mail>,
}

impl mailin_embedded::Handler for Recorder {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Some(Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: String::new(),
        });
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(m) = &mut self.current {
            m.data.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        if let Some(m) = self.current.take() {
            self.mails.lock().unwrap().push(m);
        }
        mailin_embedded::response::OK
    }
}

impl SmtpPeer {
    pub fn start() -> SmtpPeer {
        Self::start_on(0)
    }

    /// An SMTP server on a given port (0: any free port).
    pub fn start_on(port: u16) -> SmtpPeer {
        let mails = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = mailin_embedded::Server::new(Recorder {
            mails: mails.clone(),
            current: None,
        });
        server.with_name("smtp.test").with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpPeer { port, mails }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Mail> {
        wait_until(|| self.mails().len() >= n, &format!("{n} email(s)")).await;
        self.mails()
    }
}

/// A directory holding `rules/rules.yaml` and `templates/` (with the given files), as a
/// router started on it expects.
pub fn config_dir(rules: &str, templates: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("rules/rules.yaml"), rules).unwrap();
    for (name, text) in templates {
        let path = dir.path().join("templates").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Delivery settings for tests: retries after 100 ms, 200 ms, 300 ms; 4 attempts in all.
pub fn fast_retries() -> delivery::Settings {
    delivery::Settings {
        retry: RetryPolicy {
            schedule: [100, 200, 300].map(Duration::from_millis).to_vec(),
            max_attempts: 4,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        poll: Duration::from_millis(100),
        ..delivery::Settings::default()
    }
}

/// The real router, started through the same `switchboard::run` as `serve`, on a port of its
/// own from rules and templates in a temporary directory.
pub struct Router {
    /// Where to send requests (loopback, whatever the router listens on).
    pub addr: SocketAddr,
    /// The address the router listens on (`0.0.0.0:port` for a router beyond loopback).
    pub listen: SocketAddr,
    pub dir: tempfile::TempDir,
    /// A handle of the test's own on the router's store (as `dlq` and `deliveries` open it).
    pub store: Store,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
}

/// How a test router is started besides its delivery settings.
#[derive(Clone)]
pub struct Start {
    /// The address to listen on (its port is ignored: a free one is taken).
    pub listen: SocketAddr,
    /// `SWITCHBOARD_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--ready-max-pending`.
    pub ready_max_pending: u64,
    /// `--store` (default: SQLite in the router's directory).
    pub store: Option<String>,
    /// The webhook sources mounted (default: the build's).
    pub sources: Sources,
    /// `--allowed-host`.
    pub allowed_hosts: Vec<String>,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_token: None,
            ready_max_pending: 1_000,
            store: None,
            sources: Sources::default(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl Router {
    /// Starts the router on `rules` with the given extra template files.
    pub async fn start(rules: &str, templates: &[(&str, &str)]) -> Router {
        Self::start_in(config_dir(rules, templates)).await
    }

    /// Starts the router on a prepared directory holding `rules/rules.yaml` and `templates/`,
    /// with its store in the same directory and a fast retry schedule.
    pub async fn start_in(dir: tempfile::TempDir) -> Router {
        Self::start_with(dir, fast_retries()).await
    }

    /// Starts the router with the given delivery settings.
    pub async fn start_with(dir: tempfile::TempDir, settings: delivery::Settings) -> Router {
        Self::start_as(dir, settings, Start::default()).await
    }

    /// Starts the router listening on `listen`'s address (loopback or not; a free port) with
    /// an admin token.
    pub async fn start_on(
        dir: tempfile::TempDir,
        settings: delivery::Settings,
        (listen, admin_token): (SocketAddr, Option<String>),
        ready_max_pending: u64,
    ) -> Router {
        let start = Start {
            listen,
            admin_token,
            ready_max_pending,
            ..Start::default()
        };
        Self::start_as(dir, settings, start).await
    }

    /// Starts the router on a given store URL (default: SQLite in `dir`).
    pub async fn start_full(
        dir: tempfile::TempDir,
        settings: delivery::Settings,
        (listen, admin_token): (SocketAddr, Option<String>),
        ready_max_pending: u64,
        store: Option<&str>,
    ) -> Router {
        let start = Start {
            listen,
            admin_token,
            ready_max_pending,
            store: store.map(str::to_string),
            ..Start::default()
        };
        Self::start_as(dir, settings, start).await
    }

    /// The router's options as `serve` would make them from its flags, for this directory.
    pub fn options(dir: &Path, settings: delivery::Settings, start: &Start) -> Options {
        let paths = ConfigPaths {
            rules: dir.join("rules/rules.yaml"),
            templates: dir.join("templates"),
        };
        let url = start
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("switchboard.db").display()));
        let mut options = Options::new(paths, url);
        options.sources = start.sources.clone();
        options.lease = Duration::from_secs(2);
        options.delivery = settings;
        options.admin_token = start.admin_token.clone();
        options.allowed_hosts = start.allowed_hosts.clone();
        // Probes see a change within a tenth of a second, as the tests expect.
        options.probe_interval = Duration::from_millis(100);
        options.rate_limit = 5;
        options.rate_limit_burst = 20;
        options.ready_max_pending = start.ready_max_pending;
        options.shutdown_grace = Duration::from_secs(5);
        options
    }

    /// Starts the router through `switchboard::run` and waits until it answers.
    pub async fn start_as(
        dir: tempfile::TempDir,
        settings: delivery::Settings,
        start: Start,
    ) -> Router {
        let options = Self::options(dir.path(), settings, &start);
        let url = options.store.clone();
        let bind = SocketAddr::new(start.listen.ip(), 0);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let listen = listener.local_addr().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], listen.port()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(switchboard::run(options, listener, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let begun = Instant::now();
        while client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err()
        {
            if running.is_finished() {
                match running.await.unwrap() {
                    Err(e) => panic!("the router did not start: {e}"),
                    Ok(()) => panic!("the router stopped at once"),
                }
            }
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "the router did not answer"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let store = Store::open(&url).await.unwrap();
        Router {
            addr,
            listen,
            dir,
            store,
            client,
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// Stops the router as a shutdown would, and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.unwrap().expect("the router ran");
        }
    }

    /// The router's answer to `/api/status`.
    pub async fn status(&self) -> Value {
        let (code, status) = self.get("/api/status").await;
        assert_eq!(code, 200, "{status}");
        status
    }

    /// The hash of the configuration serving now.
    pub async fn config_hash(&self) -> String {
        self.status().await["config_hash"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits until `/api/status` satisfies `ok` (panics after 10 s).
    pub async fn wait_status(&self, what: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
        let begun = Instant::now();
        loop {
            let status = self.status().await;
            if ok(&status) {
                return status;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the router (as a shutdown would) and starts it again on the same rules and store.
    pub async fn restart(mut self) -> Router {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Router::start_in(dir).await
    }

    /// Posts a webhook body (any bytes) and returns status and JSON answer.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts an event to `/webhooks/smartlead` and checks it was received.
    pub async fn post(&self, event: &Value) -> String {
        let (status, body) = self
            .post_raw("/webhooks/smartlead", event.to_string())
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "received", "{body}");
        body["event_id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules/rules.yaml")
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`:
/// (certificate path, key path).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl SmtpPeer {
    /// An SMTP server offering STARTTLS with the certificate at `cert`/`key`.
    pub fn start_starttls(cert: &Path, key: &Path) -> SmtpPeer {
        let mails = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = mailin_embedded::Server::new(Recorder {
            mails: mails.clone(),
            current: None,
        });
        server
            .with_name("smtp.test")
            .with_ssl(mailin_embedded::SslConfig::SelfSigned {
                cert_path: cert.to_string_lossy().to_string(),
                key_path: key.to_string_lossy().to_string(),
            })
            .expect("TLS set up")
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpPeer { port, mails }
    }

    /// Puts implicit TLS (SMTPS, like port 465) in front of this server: a TLS listener that
    /// forwards each decrypted connection to it. Returns the TLS port.
    pub async fn behind_implicit_tls(&self, cert: &Path, key: &Path) -> u16 {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
        let certs = vec![rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_port = listener.local_addr().unwrap().port();
        let plain = self.port;
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", plain)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        tls_port
    }
}

/// The same payload made a distinct webhook delivery (a fresh `stats_id`), for tests that post
/// variations of one fixture and must not have them taken for repeats.
pub fn unique(mut event: Value) -> Value {
    event["stats_id"] = Value::String(uuid::Uuid::now_v7().to_string());
    event
}

/// The real binary serving `dir/rules.yaml` with its store in `dir`, on a free port.
pub struct Binary {
    pub child: std::process::Child,
    pub url: String,
}

impl Binary {
    pub async fn start(dir: &Path, extra: &[&str]) -> Binary {
        Self::start_with_env(dir, extra, &[]).await
    }

    /// Starts with extra environment variables; its log (stderr) goes to `dir/router.log`.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Binary {
        Self::start_on(dir, None, extra, env).await
    }

    /// Starts on a given store URL (default: SQLite in `dir`).
    pub async fn start_on(
        dir: &Path,
        store: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = store
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("switchboard.db").display()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                &store,
            ])
            .args([
                "--rules",
                &dir.join("rules.yaml").to_string_lossy(),
                "--templates",
                &dir.join("templates").to_string_lossy(),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("router.log")).unwrap())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let start = Instant::now();
        while client.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the router did not start"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Binary { child, url }
    }

    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Two instances of the binary on one store, each serving `rules` from a directory of its
/// own (kept with them).
pub async fn two_instances(store: &str, rules: &str) -> ([Binary; 2], [tempfile::TempDir; 2]) {
    let dirs = [(); 2].map(|_| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        dir
    });
    let (a, b) = tokio::join!(
        Binary::start_on(dirs[0].path(), Some(store), &[], &[]),
        Binary::start_on(dirs[1].path(), Some(store), &[], &[])
    );
    ([a, b], dirs)
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Router {
    /// The sum of a metric's series whose labels include every `(label, value)` given.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_sum(text.as_str().unwrap_or(""), name, labels)
    }

    /// Waits until [`Router::metric`] reaches at least `value` (panics after 10 s).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let start = Instant::now();
        loop {
            let now = self.metric(name, labels).await;
            if now >= value {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}{labels:?} stayed at {now}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Sums the series of `name` in a Prometheus/OpenMetrics text whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let ok = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
