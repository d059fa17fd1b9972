//! A real `zonestore serve` process and the real S3 clients (aws-cli, boto3 and s3fs from the
//! project's venv, which `scripts/install-deps.sh` creates) pointed at it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{Process, repo_root, zonestore_bin};

/// The access key the tests' first user has.
pub const ACCESS_KEY: &str = "AKIAZONESTORETEST001";
/// Its secret key.
pub const SECRET_KEY: &str = "zonestore-test-secret-key-0000000000000001";

/// A program from the project's venv. Panics, saying how to get it, when the venv is missing:
/// the end-to-end tests are part of the suite, never silently skipped.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = repo_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh (it creates .venv with aws-cli, boto3 and s3fs)",
        path.display()
    );
    path
}

/// A running `zonestore serve`.
pub struct S3Server {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The admin API's `host:port`.
    pub admin: String,
    /// The data directory.
    pub data: PathBuf,
    /// The access key clients use.
    pub access_key: String,
    /// Its secret key.
    pub secret_key: String,
}

impl S3Server {
    /// Starts `zonestore serve --data DATA --listen 127.0.0.1:0` with the test user and
    /// `extra` flags, and waits until it serves.
    pub fn start(data: &Path, extra: &[&str]) -> S3Server {
        let data_arg = data.to_str().expect("a UTF-8 temporary path");
        let mut args = vec![
            "serve",
            "--data",
            data_arg,
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ];
        args.extend_from_slice(extra);
        Self::start_raw(data, &args)
    }

    /// Starts `zonestore` with exactly `args` (which must run `serve`).
    pub fn start_raw(data: &Path, args: &[&str]) -> S3Server {
        Self::from_process(data, Process::start(args))
    }

    /// Waits until `process` (a `zonestore serve`) serves, and reads the endpoints and the
    /// credentials it prints.
    pub fn from_process(data: &Path, process: Process) -> S3Server {
        let endpoint = process
            .wait_for_line("endpoint:", Duration::from_secs(60))
            .split_whitespace()
            .nth(1)
            .expect("endpoint: URL")
            .to_string();
        let admin = process
            .wait_for_line("admin:", Duration::from_secs(10))
            .split_whitespace()
            .nth(1)
            .expect("admin: URL")
            .trim_start_matches("http://")
            .to_string();
        let value = |line: String| line.split_whitespace().nth(1).unwrap_or("").to_string();
        let access_key = value(process.wait_for_line("access_key:", Duration::from_secs(10)));
        let line = process.wait_for_line("secret_key:", Duration::from_secs(10));
        let secret_key = value(line.clone());
        let secret_key = if secret_key.starts_with('(') {
            SECRET_KEY.to_string()
        } else if secret_key == "in" {
            // A later start names the credentials file rather than print the secret again.
            let path = line.split_whitespace().nth(2).expect("credentials path");
            let text = std::fs::read_to_string(path).expect("credentials file");
            text.lines()
                .find_map(|l| l.strip_prefix("secret_key = "))
                .expect("secret_key in the credentials file")
                .trim_matches('"')
                .to_string()
        } else {
            secret_key
        };
        S3Server {
            process,
            endpoint,
            admin,
            data: data.to_path_buf(),
            access_key,
            secret_key,
        }
    }

    /// Waits for the server to exit by itself (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "zonestore did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The environment every client gets: the test user, a region, and no stray AWS
    /// configuration from the machine.
    pub fn client_env(&self, command: &mut Command) {
        command
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "2")
            .env("ENDPOINT", &self.endpoint)
            .env("ADMIN", &self.admin)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// Runs `aws --endpoint-url ENDPOINT ARGS...`.
    pub fn aws(&self, args: &[&str]) -> Output {
        let mut command = Command::new(venv_bin("aws"));
        command.arg("--endpoint-url").arg(&self.endpoint).args(args);
        self.client_env(&mut command);
        command.output().expect("run aws")
    }

    /// Runs aws-cli and returns its stdout; panics with its stderr when it fails.
    pub fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(
            out.status.success(),
            "aws {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs aws-cli expecting a failure whose message contains `code`.
    pub fn aws_fails_with(&self, args: &[&str], code: &str) {
        let out = self.aws(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "aws {args:?} should have failed with {code}"
        );
        assert!(
            stderr.contains(code),
            "aws {args:?} failed without {code}:\n{stderr}"
        );
    }

    /// Runs a Python client script from `tests/clients/` with the venv's Python; panics with
    /// its output when it fails.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        self.python_with_env(script, args, &[])
    }

    /// Like [`S3Server::python`], with extra environment variables.
    pub fn python_with_env(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut command = Command::new(venv_bin("python"));
        command
            .arg(repo_root().join("tests/clients").join(script))
            .args(args);
        self.client_env(&mut command);
        for (k, v) in env {
            command.env(k, v);
        }

        let out = command.output().expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        assert!(
            out.status.success(),
            "{script} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Starts a Python client script in the background.
    pub fn python_spawn(&self, script: &str, args: &[&str]) -> std::process::Child {
        let mut command = Command::new(venv_bin("python"));
        command
            .arg(repo_root().join("tests/clients").join(script))
            .args(args);
        self.client_env(&mut command);
        command.spawn().expect("start python")
    }

    /// Starts a Python client script in the background with its stdout captured.
    pub fn python_spawn_piped(&self, script: &str, args: &[&str]) -> std::process::Child {
        let mut command = Command::new(venv_bin("python"));
        command
            .arg(repo_root().join("tests/clients").join(script))
            .args(args)
            .stdout(std::process::Stdio::piped());
        self.client_env(&mut command);
        command.spawn().expect("start python")
    }

    /// Runs `zonestore admin --server ADMIN ARGS...` and returns its stdout.
    pub fn admin_cli(&self, args: &[&str]) -> String {
        let out = Command::new(zonestore_bin())
            .arg("admin")
            .arg("--server")
            .arg(&self.admin)
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("run zonestore admin");
        assert!(
            out.status.success(),
            "zonestore admin {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.admin, "/metrics");
        assert_eq!(status, 200, "GET /metrics");
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// The sum of a metric's samples whose line contains every one of `filters`.
pub fn metric_sum(metrics: &str, name: &str, filters: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET (no client library, no signing): status and body.
pub fn http_get(address: &str, path_and_query: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// Splits `http://host:port/path?query` into `host:port` and `/path?query`.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_string(), path.to_string())
}

/// Writes `len` bytes of deterministic pseudo-random data to `path`.
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        super::pseudo_random::fill(&mut buf, &mut x);
        let n = left.min(buf.len());
        file.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
}

/// Whether two files have the same bytes.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The headers that sign a request of `method` on `path` to `host` as the test user, with its
/// body unsigned (SigV4, `UNSIGNED-PAYLOAD`), given the day's signing key (see
/// [`s3api::auth::sigv4::signing_key`]): `host`, `x-amz-date`, `x-amz-content-sha256` and
/// `authorization`.
pub fn unsigned_payload_headers(
    method: &str,
    path: &str,
    host: &str,
    key: &[u8],
) -> Vec<(&'static str, String)> {
    use s3api::auth::sigv4;
    let amz_date = s3api::time::amz_date(std::time::SystemTime::now());
    let scope = format!("{}/us-east-1/s3/aws4_request", &amz_date[..8]);
    let mut headers = http::HeaderMap::new();
    headers.insert("host", host.parse().expect("host"));
    headers.insert("x-amz-date", amz_date.parse().expect("date"));
    headers.insert(
        "x-amz-content-sha256",
        http::HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    let signed = ["host", "x-amz-content-sha256", "x-amz-date"];
    let canonical = sigv4::canonical_request(
        method,
        path,
        None,
        &headers,
        &signed,
        "UNSIGNED-PAYLOAD",
        false,
    )
    .expect("canonical request");
    let signature = sigv4::sign(key, &sigv4::string_to_sign(&amz_date, &scope, &canonical));
    vec![
        ("host", host.to_string()),
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD".to_string()),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={}, Signature={signature}",
                signed.join(";")
            ),
        ),
    ]
}
