//! Helpers shared by the end-to-end tests: starting real `zonestore` processes and finding the
//! repository's files.

#![allow(dead_code)]

pub mod pseudo_random;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate lives in the repository root")
        .to_path_buf()
}

/// The `zonestore` binary built for this test run.
pub fn zonestore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zonestore"))
}

/// A child process that is killed when dropped.
pub struct Process {
    pub child: Child,
    pub lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Process {
    /// Starts `zonestore` with `args`, collecting its stdout lines.
    pub fn start(args: &[&str]) -> Process {
        Self::start_with_env(args, &[])
    }

    /// Starts `zonestore` with `args` and extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start_in(None, args, env)
    }

    /// Starts `zonestore` in directory `cwd` (if given) with `args` and environment `env`.
    pub fn start_in(cwd: Option<&std::path::Path>, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(zonestore_bin());
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("ZONESTORE_ACCESS_KEY")
            .env_remove("ZONESTORE_SECRET_KEY");
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }

        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start zonestore");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[zonestore] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines: std::sync::Mutex::new(lines),
        }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let received = self
                .lines
                .lock()
                .expect("no test thread panicked holding the lines")
                .recv_timeout(left);
            match received {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("zonestore did not print {needle:?} within {timeout:?}"),
            }
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. libc::SIGTERM).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `zonestore ARGS...` expecting it to fail; returns what it printed on stderr.
pub fn zonestore_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(zonestore_bin())
        .args(args)
        .env_remove("ZONESTORE_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "zonestore {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `host:port` at the end of a line such as "... on 127.0.0.1:4420".
pub fn address_in(line: &str) -> String {
    line.split_whitespace()
        .last()
        .expect("a line with an address")
        .trim_end_matches('.')
        .to_string()
}
