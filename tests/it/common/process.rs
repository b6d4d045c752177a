//! The bridge as an operator runs it: the real binary in its own process, for what only a
//! process shows (peak memory, signals, exit codes).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct BridgeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: tempfile::NamedTempFile,
}

impl BridgeProcess {
    /// Starts `timbridge serve` on free loopback ports with `args`, and waits for /healthz.
    pub async fn start(args: &[&str]) -> BridgeProcess {
        BridgeProcess::start_via(&[], args).await
    }

    /// The same, run through `wrapper` (e.g. `setpriv` with its flags, to run as another user).
    pub async fn start_via(wrapper: &[&str], args: &[&str]) -> BridgeProcess {
        let port = super::free_port();
        let admin_port = super::free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, flags)) => {
                let mut command = Command::new(program);
                command.args(flags).arg(env!("CARGO_BIN_EXE_timbridge"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_timbridge")),
        };
        let child = command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("timbridge starts");
        let mut process = BridgeProcess {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
            log,
        };
        let http = super::Http::default();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // A process that exited (a bind error, a spool it cannot open) says why in its log.
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the bridge process exited ({status}) before serving /healthz:\n{}",
                    process.logs()
                );
            }
            let up = tokio::net::TcpStream::connect(process.admin).await.is_ok()
                && http.admin(process.admin, "/healthz").await.0 == 200;
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after 15s waiting for the bridge process to serve /healthz:\n{}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the process to exit, at most `deadline`.
    pub async fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the bridge did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (TERM, KILL, STOP, CONT, ...) to a process, for real.
pub fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}
