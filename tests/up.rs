//! A running `isola up` for the integration tests, and its client commands.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::*;

/// A service running `sh -c SCRIPT` in pid+mount namespaces, with `extra`
/// merged in (supervision fields, resources).
pub fn svc(script: &str, extra: Value) -> Value {
    let mut s = json!({
        "process": {"args": ["sh", "-c", script, "isola-test-payload"]},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    });
    if let (Some(o), Value::Object(e)) = (s.as_object_mut(), extra) {
        for (k, v) in e {
            if k == "linux" {
                for (lk, lv) in v.as_object().cloned().unwrap_or_default() {
                    o["linux"][lk] = lv;
                }
            } else {
                o.insert(k, v);
            }
        }
    }
    s
}

/// A running `isola up`, shut down (SIGTERM, then SIGKILL) on drop.
pub struct Up {
    pub name: String,
    pub dir: Scratch,
    pub child: Option<Child>,
}

impl Up {
    pub fn start(name: &str, services: Value, extra_args: &[&str]) -> Up {
        Up::start_under(name, services, extra_args, &[])
    }

    /// `isola up` run through `wrapper` (e.g. `prlimit --nofile=…`), which
    /// must exec it in the same process.
    pub fn start_under(name: &str, services: Value, extra_args: &[&str], wrapper: &[&str]) -> Up {
        let dir = Scratch::new(&format!("up-{name}"));
        let up = Up {
            name: name.to_string(),
            dir,
            child: None,
        };
        up.write_stack(&services);
        up.spawn_under(extra_args, wrapper)
    }

    pub fn spawn(self, extra_args: &[&str]) -> Up {
        self.spawn_under(extra_args, &[])
    }

    pub fn spawn_under(mut self, extra_args: &[&str], wrapper: &[&str]) -> Up {
        let out = std::fs::File::create(self.dir.path("up.out")).unwrap();
        let err = std::fs::File::create(self.dir.path("up.err")).unwrap();
        let mut args = vec![
            "up".to_string(),
            "--socket".into(),
            self.socket(),
            "--log-dir".into(),
            self.logdir().display().to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push(self.stack_path().display().to_string());
        let bin = isola_bin().display().to_string();
        let (program, prefix) = match wrapper.split_first() {
            Some((first, rest)) => (first.to_string(), [rest, &[bin.as_str()]].concat()),
            None => (bin.clone(), Vec::new()),
        };
        self.child = Some(
            Command::new(program)
                .args(&prefix)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        // Connectable, not merely present: a killed supervisor leaves its socket file.
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("isola up exited with {st}: {}", self.stderr());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "isola up did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    pub fn stack_path(&self) -> PathBuf {
        self.dir.path(&format!("{}.json", self.name))
    }
    pub fn write_stack(&self, services: &Value) {
        std::fs::write(self.stack_path(), json!({"services": services}).to_string()).unwrap();
    }
    pub fn socket(&self) -> String {
        self.dir.path("isola.sock").display().to_string()
    }
    pub fn logdir(&self) -> PathBuf {
        self.dir.path("logs")
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path("up.err")).unwrap_or_default()
    }
    /// The pid `isola up` started as: the stack's keeper, which forwards
    /// signals to the supervisor.
    pub fn pid(&self) -> nix::unistd::Pid {
        pid_of(self.child.as_ref().unwrap())
    }

    /// `isola info --json`.
    pub fn info(&self) -> Value {
        let (code, out, err) = self.cli(&["info", "--json"]);
        assert_eq!(code, 0, "{err}\n{}", self.stderr());
        serde_json::from_str(&out).expect("info JSON")
    }

    /// Each service's name and pid (0 when it has none), as `status` lists them.
    pub fn pids(&self) -> Vec<(String, i64)> {
        self.status()
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap_or("").to_string();
                (name, s["pid"].as_i64().unwrap_or(0))
            })
            .collect()
    }

    /// The supervisor's pid (the keeper's child), as `isola info` says.
    pub fn supervisor_pid(&self) -> nix::unistd::Pid {
        let pid = self.info()["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok());
        nix::unistd::Pid::from_raw(pid.expect("info names the supervisor's pid"))
    }

    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut a = vec![args[0], "--socket"];
        let sock = self.socket();
        a.push(&sock);
        a.extend_from_slice(&args[1..]);
        let out = isola(&a, "", Duration::from_secs(120));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn status(&self) -> Vec<Value> {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(
            code,
            0,
            "status: {err}\nthe supervisor said:\n{}",
            self.stderr()
        );
        serde_json::from_str(&out).expect("status JSON")
    }

    pub fn service(&self, name: &str) -> Value {
        self.status()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Poll `status` until `f` holds for the service (tests may poll; the
    /// supervisor never does).
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let t = Instant::now();
        loop {
            let s = self.service(name);
            if f(&s) {
                return s;
            }
            assert!(
                t.elapsed() < timeout,
                "{name}: waited {timeout:?} for {what}; last status {s}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Until `isola logs NAME` shows a line ending in `text`.
    pub fn wait_log(&self, name: &str, text: &str) {
        let t = Instant::now();
        loop {
            let (_, out, _) = self.cli(&["logs", name]);
            if out.lines().any(|l| l.ends_with(text)) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} never logged {text:?}: {out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client command left running (`logs -f`, `events`), its stdout
    /// piped.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(isola_bin())
            .args([args[0], "--socket", &self.socket()])
            .args(&args[1..])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// An `isola events --json` client, and its events as they come.
    pub fn events(&self) -> (Child, std::sync::mpsc::Receiver<Value>) {
        use std::io::{BufRead, BufReader};
        let mut client = self.spawn_cli(&["events", "--json"]);
        let out = client.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        (client, rx)
    }

    /// The last word of each of the service's last 10 stdout lines.
    pub fn stdout_words(&self, name: &str) -> Vec<String> {
        let (code, out, err) = self.cli(&["logs", "-n", "10", name]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter(|l| l.starts_with("stdout "))
            .filter_map(|l| l.rsplit(' ').next())
            .map(str::to_string)
            .collect()
    }

    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_for(name, state, Duration::from_secs(60), |s| {
            s["state"] == state
        })
    }

    /// `kill -9` of `isola up` (the keeper): the supervisor and every
    /// service die with it; returns once the supervisor is gone too (it
    /// dies of its PDEATHSIG, a moment later).
    pub fn kill_keeper(&mut self) {
        let sup = self.supervisor_pid();
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{sup}")).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the supervisor outlived its keeper"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `isola down`, then the supervisor must exit 0.
    pub fn down(mut self) -> String {
        let (code, _, err) = {
            let errs = self.dir.path("up.err");
            let watch = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(30));
                std::fs::read_to_string(errs).unwrap_or_default()
            });
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cli(&["down"])));
            match r {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("the supervisor said:\n{}", watch.join().unwrap_or_default());
                    std::panic::resume_unwind(e)
                }
            }
        };
        assert_eq!(code, 0, "down: {err}");
        let st = wait_output(self.child.take().unwrap(), Duration::from_secs(60));
        assert_eq!(st.status.code(), Some(0), "{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(pid_of(&c), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn history(s: &Value) -> Vec<(u64, Option<u64>)> {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["startMs"].as_u64().unwrap(), h["exitMs"].as_u64()))
        .collect()
}

/// One `status` request on a raw connection, timed to the last byte.
pub fn status_latency(sock: &str) -> Duration {
    use std::io::{BufRead, BufReader, Write};
    let t = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect");
    // A stalled supervisor fails the test here, not at the binary's timeout.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"{\"cmd\":\"status\"}\n").expect("send");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("no status reply within 10 s: the supervisor is stalled");
    assert!(line.starts_with("{\"ok\":true"), "{line}");
    t.elapsed()
}
