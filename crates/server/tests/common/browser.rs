//! A real browser the tests drive: Debian's headless Chromium, spoken to over
//! its DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3,
//! answers on fd 4, each a JSON message ended by a NUL byte). The pages under
//! test run no script of their own; the test types into fields and presses
//! buttons the way a person would, and reads the DOM the server sent back.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Browser {
    child: Child,
    commands: File,
    answers: Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

/// A watchdog against a wedged browser, not a timing assertion.
const WATCHDOG: Duration = Duration::from_secs(60);

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let (cmd_read, cmd_write) = pipe();
        let (ans_read, ans_write) = pipe();
        let mut command = Command::new(super::chromium());
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--disable-dev-shm-usage", "--remote-debugging-pipe"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe fcntl and dup2 calls between fork and
        // exec. The pipe ends may themselves be fds 3 or 4 (tests start browsers
        // on several threads, so low numbers come free): dup2 of a descriptor
        // onto itself would keep its close-on-exec flag and chromium would start
        // without it, and one end could overwrite the other. So both are first
        // moved above 9 (close-on-exec), then dup2'd to 3 and 4, which clears
        // the flag on exactly those two.
        unsafe {
            command.pre_exec(move || {
                let high_cmd = libc::fcntl(cmd_read, libc::F_DUPFD_CLOEXEC, 10);
                let high_ans = libc::fcntl(ans_write, libc::F_DUPFD_CLOEXEC, 10);
                if high_cmd < 0 || high_ans < 0 || libc::dup2(high_cmd, 3) < 0 || libc::dup2(high_ans, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium (Debian package 'chromium')");
        // SAFETY: each descriptor is ours and closed exactly once, by its File.
        let (commands, answers_file) = unsafe {
            drop(File::from_raw_fd(cmd_read));
            drop(File::from_raw_fd(ans_write));
            (File::from_raw_fd(cmd_write), File::from_raw_fd(ans_read))
        };
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers_file);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).map(|n| n > 0).unwrap_or(false) {
                buf.pop();
                let message = serde_json::from_slice::<Value>(&buf).unwrap_or(Value::Null);
                if tx.send(message).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        let mut b = Browser { child, commands, answers: rx, next_id: 0, session: String::new(), _profile: profile };
        let target = b.send(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("target id").to_string();
        let attached = b.send(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        b.session = attached["sessionId"].as_str().expect("session id").to_string();
        b
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let answer = self.try_send(session, method, params);
        assert!(answer["error"].is_null(), "{method}: {}", answer["error"]);
        answer["result"].clone()
    }

    /// The whole answer, an error included (a page that is navigating away
    /// answers "execution context destroyed").
    fn try_send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            let exit = self.child.try_wait();
            panic!("chromium went away before {method} ({e}); its exit: {exit:?}");
        }
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => return v,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium went away during {method}"),
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    /// Evaluates an expression in the page (DevTools, not the page's own
    /// scripts, so the page's CSP still forbids scripts) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.page("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(r["exceptionDetails"].is_null(), "{expression}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Marks the current document, runs `action`, and waits until another
    /// document has loaded completely.
    fn and_wait(&mut self, action: impl FnOnce(&mut Browser)) {
        self.eval("window.__before_navigation = true");
        action(self);
        let deadline = Instant::now() + WATCHDOG;
        let loaded = json!({ "type": "boolean", "value": true });
        let session = self.session.clone();
        let check = json!({ "expression": "window.__before_navigation !== true && document.readyState === 'complete'",
                             "returnByValue": true });
        // Asked while the old page goes away, the question may fail: that is "not yet".
        while self.try_send(Some(&session), "Runtime.evaluate", check.clone())["result"]["result"] != loaded {
            assert!(Instant::now() < deadline, "the page did not load");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Runs `js` (which navigates: a form submitted by script) and waits for the new page.
    pub fn run_and_wait(&mut self, js: &str) {
        let js = js.to_string();
        self.and_wait(|b| {
            b.eval(&js);
        });
    }

    /// The value of the cookie `name` for `url`, HttpOnly ones included (the
    /// DevTools see them; the page's scripts would not).
    pub fn cookie(&mut self, url: &str, name: &str) -> Option<String> {
        let r = self.page("Network.getCookies", json!({ "urls": [url] }));
        r["cookies"].as_array()?.iter().find(|c| c["name"] == json!(name))?["value"].as_str().map(str::to_string)
    }

    pub fn goto(&mut self, url: &str) {
        let url = url.to_string();
        self.and_wait(|b| {
            b.page("Page.navigate", json!({ "url": url }));
        });
    }

    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_string()
    }

    /// The HTTP status of the page now shown.
    pub fn status(&mut self) -> u16 {
        self.eval("performance.getEntriesByType('navigation')[0].responseStatus").as_u64().unwrap_or(0) as u16
    }

    /// Types `value` into the field named `name` of form `#form` (or picks it in a select).
    pub fn fill(&mut self, form: &str, name: &str, value: &str) {
        let js = format!(
            "(() => {{ const f = document.querySelector({}).elements[{}]; f.value = {}; return f.value; }})()",
            json!(format!("#{form}")),
            json!(name),
            json!(value)
        );
        assert_eq!(self.eval(&js), json!(value), "field {name} of #{form}");
    }

    /// Presses the form's button whose text is `label`, and waits for the answer page.
    pub fn press(&mut self, form: &str, label: &str) {
        let js = format!(
            "[...document.querySelector({}).querySelectorAll('button')].find(b => b.textContent === {}).click()",
            json!(format!("#{form}")),
            json!(label)
        );
        self.and_wait(|b| {
            b.eval(&js);
        });
    }

    /// Chooses `path` in the form's file field `name`.
    pub fn choose_file(&mut self, form: &str, name: &str, path: &std::path::Path) {
        let doc = self.page("DOM.getDocument", json!({}));
        let node = self.page(
            "DOM.querySelector",
            json!({ "nodeId": doc["root"]["nodeId"], "selector": format!("#{form} input[name={name}]") }),
        );
        self.page("DOM.setFileInputFiles", json!({ "nodeId": node["nodeId"], "files": [path.display().to_string()] }));
    }

    /// A PNG of the page as shown (for a person to look at; no test asserts on pixels).
    pub fn screenshot(&mut self, path: &std::path::Path) {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1400, "deviceScaleFactor": 1, "mobile": false }),
        );
        let shot = self.page("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }));
        let data = shot["data"].as_str().unwrap_or_default();
        std::fs::write(path, base64_decode(data)).expect("write screenshot");
    }

    /// Whether the page has an element with this id.
    pub fn has(&mut self, id: &str) -> bool {
        self.eval(&format!("document.getElementById({}) !== null", json!(id))) == json!(true)
    }

    /// The text of the element with this id ("" when there is none).
    pub fn text(&mut self, id: &str) -> String {
        self.eval(&format!("(document.getElementById({}) || {{}}).textContent || ''", json!(id)))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
