//! Load and leaks: many launches in a row, many VMs at once, and every way a VM can end.
//! Each must give the right exit code and the guest's whole output, and leave no process
//! behind: neither a VM process still tearing down nor a zombie. The host's memory is
//! reported before and after (`cargo test --test load -- --nocapture` shows the figures);
//! `bench/load.py` runs the long versions against the release binary.
//!
//! Every process a test starts carries a marker in its environment, which the VM process
//! inherits through the fork (src/supervisor.rs), so the test finds exactly its own
//! processes in /proc whatever else runs on the machine. The tests take turns (`turn`):
//! each measures what its own VMs cost.

mod common;
use common::*;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable that marks the processes of one test.
const MARK_VAR: &str = "MINIPC_LOAD_TEST";

/// How long a VM process may take to go once its parent has reported (the teardown of a
/// VM with an in-kernel irqchip and PIT takes 10-20 ms here; more under load).
const TEARDOWN_GRACE: Duration = Duration::from_secs(10);

/// The most the host's available memory may drop over a test. A leaked idle VM holds
/// about 1.3 MiB of kernel memory here (vmalloc, slab, page tables, stacks: 32 idle VMs of
/// 256 MiB measured) besides its processes, so a thousand leaked VMs would exceed it;
/// other work on the machine gets generous room.
const MEM_AVAILABLE_DROP_MAX_KIB: u64 = 512 * 1024;

/// The most the test process itself may grow over a test.
const SELF_RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;

/// The load tests run one at a time: each counts its own processes and memory.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A marker for one test's processes, unique on the machine.
fn mark(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// A minipc command carrying `mark`, in a process group of its own (the VM process joins
/// it), with stdin closed and stdout and stderr piped.
fn command(mark: &str, args: &[&str]) -> Command {
    let mut c = Command::new(MINIPC);
    c.args(args)
        .env(MARK_VAR, mark)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The fields of /proc/PID/stat after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The processes running the minipc binary with `mark` in their environment, as
/// "PID (parent PPID, state S)" (a zombie has neither a command line nor an environment
/// left: see `zombie_children`).
fn marked(mark: &str) -> Vec<String> {
    let needle = format!("{MARK_VAR}={mark}");
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).next() != Some(MINIPC.as_bytes()) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        if let Some(f) = stat_fields(pid) {
            let field = |i: usize| f.get(i).map_or("?", String::as_str);
            out.push(format!("{pid} (parent {}, state {})", field(1), field(0)));
        }
    }
    out
}

/// The zombies among this process's children: processes it started and never waited for.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    pids()
        .into_iter()
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.first().map(String::as_str) == Some("Z") && f.get(1) == Some(&me)
            })
        })
        .collect()
}

/// Waits up to TEARDOWN_GRACE for every process of `mark` to be gone, then asserts that
/// none is left and that no child of the test is a zombie.
fn assert_nothing_left(mark: &str, what: &str) {
    let start = Instant::now();
    while start.elapsed() < TEARDOWN_GRACE && !marked(mark).is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = marked(mark);
    assert!(
        left.is_empty(),
        "{what}: minipc processes left {:?} after their parent exited: {left:?}",
        TEARDOWN_GRACE
    );
    let zombies = zombie_children();
    assert!(zombies.is_empty(), "{what}: zombie children {zombies:?}");
}

/// A `kB` field of a /proc file (`MemAvailable` in /proc/meminfo, `VmRSS` in status).
fn kib_field(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {file}"))
}

/// The host's memory as a test sees it.
#[derive(Clone, Copy, Debug)]
struct Memory {
    available_kib: u64,
    self_rss_kib: u64,
}

impl Memory {
    fn now() -> Memory {
        Memory {
            available_kib: kib_field("/proc/meminfo", "MemAvailable"),
            self_rss_kib: kib_field("/proc/self/status", "VmRSS"),
        }
    }

    /// Prints the change since `before` and asserts it is within bounds.
    fn check_since(self, before: Memory, what: &str) {
        let drop = before.available_kib.saturating_sub(self.available_kib);
        let growth = self.self_rss_kib.saturating_sub(before.self_rss_kib);
        eprintln!(
            "{what}: MemAvailable {} -> {} MiB (drop {} KiB), test process RSS {} -> {} KiB",
            before.available_kib / 1024,
            self.available_kib / 1024,
            drop,
            before.self_rss_kib,
            self.self_rss_kib
        );
        assert!(
            drop < MEM_AVAILABLE_DROP_MAX_KIB,
            "{what}: MemAvailable dropped by {drop} KiB"
        );
        assert!(
            growth < SELF_RSS_GROWTH_MAX_KIB,
            "{what}: the test process grew by {growth} KiB"
        );
    }
}

/// What tests/guests/load.s prints for ID, waiting or not.
fn load_output(id: u16) -> String {
    format!("load {id:04x} start\r\nload {id:04x} done\r\n")
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Launches to try in a row, and the time they may take. A debug build launches the tiny
/// guest in about 10 ms here, so the thousand fit well within the budget; a machine that
/// cannot manage MIN_SEQUENTIAL in the budget fails.
const SEQUENTIAL: usize = 1000;
const SEQUENTIAL_BUDGET: Duration = Duration::from_secs(60);
const MIN_SEQUENTIAL: usize = 200;

#[test]
fn a_thousand_launches_in_a_row_exit_right_and_leave_nothing_behind() {
    if !kvm_available() {
        return;
    }
    let _turn = turn();
    let mark = mark("sequential");
    const CODE: u64 = 0x21;
    const ID: u16 = 0x1d;
    let g = guest("load", &[("ID", ID as u64), ("CODE", CODE)]);
    let args = ["--firmware", path_str(&g), "--stats", "--timeout", "30"];
    let want = load_output(ID);
    let before = Memory::now();
    let start = Instant::now();
    let mut launches = 0;
    let mut peak_rss = 0;
    let mut tearing_down_max = 0;
    while launches < SEQUENTIAL && start.elapsed() < SEQUENTIAL_BUDGET {
        let out = command(&mark, &args).output().expect("start minipc");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            exit_code(out.status),
            ((CODE << 1) | 1) as i32,
            "launch {launches}: {err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "launch {launches}: {err}"
        );
        let rss =
            stat_value(&err, "peak_rss_kib").unwrap_or_else(|| panic!("launch {launches}: {err}"));
        peak_rss = peak_rss.max(rss);
        launches += 1;
        if launches % 50 == 0 {
            // The VM processes of the last launches may still be tearing down; they must
            // not pile up.
            let live = marked(&mark);
            tearing_down_max = tearing_down_max.max(live.len());
            assert!(
                live.len() < 20,
                "after {launches} launches: {} VM processes still there: {live:?}",
                live.len()
            );
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "{launches} launches in {:.1} s ({:.0}/s); VM peak RSS {peak_rss} KiB; at most \
         {tearing_down_max} VM processes tearing down at a sample",
        elapsed.as_secs_f64(),
        launches as f64 / elapsed.as_secs_f64()
    );
    assert!(
        launches >= MIN_SEQUENTIAL,
        "only {launches} launches in {SEQUENTIAL_BUDGET:?}"
    );
    assert_nothing_left(&mark, "sequential launches");
    Memory::now().check_since(before, "sequential launches");
}

/// VMs run at once, each waiting about a second (18 PIT ticks) before it leaves.
const CONCURRENT: u16 = 64;
const CONCURRENT_TICKS: u64 = 18;
const CONCURRENT_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn sixty_four_vms_at_once_each_exit_right_and_leave_nothing_behind() {
    if !kvm_available() {
        return;
    }
    let _turn = turn();
    let mark = mark("concurrent");
    // Debug-exit value i + 1: exit codes 3, 5, ... 129, one per VM.
    let guests: Vec<PathBuf> = (0..CONCURRENT)
        .map(|i| {
            guest(
                "load",
                &[
                    ("ID", i as u64),
                    ("CODE", i as u64 + 1),
                    ("TICKS", CONCURRENT_TICKS),
                ],
            )
        })
        .collect();
    let before = Memory::now();
    let start = Instant::now();
    let children: Vec<Child> = guests
        .iter()
        .map(|g| {
            command(
                &mark,
                &[
                    "--firmware",
                    path_str(g),
                    "--mem",
                    "16M",
                    "--stats",
                    "--timeout",
                    "50",
                ],
            )
            .spawn()
            .expect("start minipc")
        })
        .collect();
    let spawned = start.elapsed();
    let groups: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, child) in children.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send((i, out, Instant::now()));
        });
    }
    drop(tx);
    let mut results = Vec::new();
    while results.len() < CONCURRENT as usize {
        match rx.recv_timeout(CONCURRENT_DEADLINE.saturating_sub(start.elapsed())) {
            Ok(r) => results.push(r),
            Err(_) => {
                for g in &groups {
                    // SAFETY: killing a process group this test started.
                    unsafe { libc::kill(-g, libc::SIGKILL) };
                }
                panic!(
                    "only {} of {CONCURRENT} VMs ended within {CONCURRENT_DEADLINE:?}",
                    results.len()
                );
            }
        }
    }
    let all_done = start.elapsed();
    let mut peak_rss = 0;
    let mut first_done = all_done;
    for (i, out, done) in results {
        let out = out.expect("wait for minipc");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            exit_code(out.status),
            (((i as i32) + 1) << 1) | 1,
            "VM {i}: {err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            load_output(i as u16),
            "VM {i}: {err}"
        );
        peak_rss = peak_rss.max(stat_value(&err, "peak_rss_kib").unwrap_or(0));
        first_done = first_done.min(done.duration_since(start));
    }
    eprintln!(
        "{CONCURRENT} VMs: spawned in {:.2} s, first done after {:.2} s, all after {:.2} s; \
         VM peak RSS {peak_rss} KiB",
        spawned.as_secs_f64(),
        first_done.as_secs_f64(),
        all_done.as_secs_f64()
    );
    // Each guest waits about a second; one after another they would take a minute.
    assert!(
        first_done >= Duration::from_millis(800),
        "a VM ended after {first_done:?}: the guest did not wait"
    );
    assert!(
        all_done < Duration::from_secs(30),
        "the VMs did not run at the same time: {all_done:?}"
    );
    assert_nothing_left(&mark, "concurrent VMs");
    Memory::now().check_since(before, "concurrent VMs");
}

/// How a VM is ended in the exit-path table.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The guest ends it: tests/guests/ending.s with this END.
    Guest(u64),
    /// `--timeout` expires while the guest spins.
    Timeout,
    /// This signal is sent to the minipc process the caller started.
    Signal(i32),
    /// The caller's minipc process is killed with SIGKILL.
    KillParent,
}

/// One row: how the VM ends, the exit code of the process the caller started, the
/// `--stats` exit code and reasons (the VM process reports even when its parent is gone).
struct ExitPath {
    name: &'static str,
    end: End,
    code: i32,
    stats_code: i32,
    reasons: &'static [&'static str],
}

const SPIN: u64 = 6;
const TIMEOUT_SECS: &str = "3";
const LINES: u64 = 50;
/// Sectors the guest writes (LBA 1 on), and the image's size in sectors.
const WRITTEN: usize = 4;
const IMAGE_SECTORS: usize = 64;

fn exit_paths() -> Vec<ExitPath> {
    let p = |name, end, code, stats_code, reasons| ExitPath {
        name,
        end,
        code,
        stats_code,
        reasons,
    };
    let sig = |s: i32| 128 + s;
    vec![
        p("halt", End::Guest(1), 0, 0, &["halted"]),
        p("power-off", End::Guest(2), 0, 0, &["poweroff"]),
        p("reset", End::Guest(3), 0, 0, &["reset"]),
        p("debug-exit", End::Guest(4), 0x63, 0x63, &["debug-exit"]),
        // This machine's KVM may fail to emulate the exception instead of shutting down;
        // either is a crash (tests/boot.rs).
        p(
            "crash",
            End::Guest(5),
            4,
            4,
            &["triple-fault", "internal-error"],
        ),
        p("timeout", End::Timeout, 124, 124, &["timeout"]),
        p(
            "SIGINT",
            End::Signal(libc::SIGINT),
            sig(libc::SIGINT),
            sig(libc::SIGINT),
            &["signal"],
        ),
        p(
            "SIGTERM",
            End::Signal(libc::SIGTERM),
            sig(libc::SIGTERM),
            sig(libc::SIGTERM),
            &["signal"],
        ),
        p(
            "SIGHUP",
            End::Signal(libc::SIGHUP),
            sig(libc::SIGHUP),
            sig(libc::SIGHUP),
            &["signal"],
        ),
        p(
            "SIGQUIT",
            End::Signal(libc::SIGQUIT),
            sig(libc::SIGQUIT),
            sig(libc::SIGQUIT),
            &["signal"],
        ),
        // The VM process gets SIGTERM when its parent dies (PR_SET_PDEATHSIG).
        p(
            "SIGKILL of the parent",
            End::KillParent,
            sig(libc::SIGKILL),
            sig(libc::SIGTERM),
            &["signal"],
        ),
    ]
}

/// What tests/guests/ending.s prints before it ends, whichever way.
fn ending_output() -> String {
    let mut s: String = (0..LINES)
        .map(|n| format!("line {n:04x} abcdefghijklmnopqrstuvwxyz0123456789\r\n"))
        .collect();
    s.push_str("ending ready\r\ntail");
    s
}

/// Reads `r` to its end on a thread; the bytes so far are in the returned buffer.
fn collect(
    mut r: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    (buf, h)
}

fn contents(buf: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    buf.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Waits up to `limit` for `done`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// Where the guest's serial output goes in one run.
#[derive(Clone, Copy, Debug)]
enum Output {
    Pipe,
    File,
}

/// Runs one row of the table with the serial output to `output`, and checks it.
fn run_exit_path(path: &ExitPath, output: Output, images: &Path, guest_image: &[u8], mark: &str) {
    let what = format!("{} ({output:?})", path.name);
    let tag = format!("{}-{output:?}", path.name.replace(' ', "-"));
    let img = images.join(format!("{tag}.img"));
    let mut bytes = guest_image.to_vec();
    bytes.resize(IMAGE_SECTORS * 512, 0);
    std::fs::write(&img, &bytes).expect("write the disk image");
    let serial_file = images.join(format!("{tag}.serial"));
    let _ = std::fs::remove_file(&serial_file);

    let disk = format!("{},rw", img.display());
    let serial = format!("file:{}", serial_file.display());
    let timeout = match path.end {
        End::Timeout => TIMEOUT_SECS,
        _ => "60",
    };
    let mut args = vec!["--disk", &disk, "--stats", "--timeout", timeout];
    if let Output::File = output {
        args.extend(["--serial", &serial]);
    }
    let mut child = command(mark, &args).spawn().expect("start minipc");
    let parent = child.id() as i32;
    let (stdout, out_reader) = collect(child.stdout.take().expect("stdout"));
    let (stderr, err_reader) = collect(child.stderr.take().expect("stderr"));
    let output_so_far = || match output {
        Output::Pipe => contents(&stdout),
        Output::File => std::fs::read(&serial_file).unwrap_or_default(),
    };
    // The signal goes once the guest has printed everything and spins: its last byte
    // ("l", no exit after it) shows while it runs (coalesced_io.rs), and what it printed
    // must all be there after the signal. Sent at "ending ready", the signal could stop a
    // guest slowed by the host's load in the middle of "tail".
    let send = |sig: i32| {
        let ready = within(Duration::from_secs(30), || {
            output_so_far().ends_with(b"ending ready\r\ntail")
        });
        if !ready {
            // SAFETY: killing the process group this test started.
            unsafe { libc::kill(-parent, libc::SIGKILL) };
            panic!(
                "{what}: the guest never got ready: {}",
                String::from_utf8_lossy(&output_so_far())
            );
        }
        // SAFETY: signalling the process this test started.
        assert_eq!(unsafe { libc::kill(parent, sig) }, 0, "{what}: kill");
    };
    match path.end {
        End::Guest(_) | End::Timeout => {}
        End::Signal(sig) => send(sig),
        End::KillParent => send(libc::SIGKILL),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for minipc") {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: killing the process group this test started.
            unsafe { libc::kill(-parent, libc::SIGKILL) };
            let _ = child.wait();
            panic!("{what}: minipc still runs after a minute");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The readers end when the VM process, too, has closed its output.
    let closed = within(TEARDOWN_GRACE, || {
        out_reader.is_finished() && err_reader.is_finished()
    });
    if !closed {
        // SAFETY: killing the process group this test started.
        unsafe { libc::kill(-parent, libc::SIGKILL) };
        panic!(
            "{what}: the VM process kept its output open: {:?}",
            marked(mark)
        );
    }
    let _ = out_reader.join();
    let _ = err_reader.join();
    let err = String::from_utf8_lossy(&contents(&stderr)).into_owned();

    assert_eq!(exit_code(status), path.code, "{what}: {err}");
    let stats = stats_line(&err).unwrap_or_else(|| panic!("{what}: no --stats line: {err}"));
    assert!(
        path.reasons.iter().any(|r| stats.starts_with(&format!(
            "{{\"exit_reason\":\"{r}\",\"exit_code\":{},",
            path.stats_code
        ))),
        "{what}: {stats}"
    );
    assert!(!err.contains("lost"), "{what}: {err}");
    let (serial_out, stdout_text) = match output {
        Output::Pipe => (contents(&stdout), Vec::new()),
        Output::File => (
            std::fs::read(&serial_file).unwrap_or_else(|e| panic!("{what}: {e}")),
            contents(&stdout),
        ),
    };
    let want = ending_output();
    let tail = |b: &[u8]| String::from_utf8_lossy(&b[b.len().saturating_sub(60)..]).into_owned();
    assert!(
        serial_out == want.as_bytes(),
        "{what}: the serial output has {} bytes, ending {:?}; expected {} bytes, ending {:?}",
        serial_out.len(),
        tail(&serial_out),
        want.len(),
        tail(want.as_bytes())
    );
    assert!(stdout_text.is_empty(), "{what}: stdout {stdout_text:?}");
    let disk = std::fs::read(&img).expect("read the disk image");
    assert_eq!(
        &disk[..512],
        &bytes[..512],
        "{what}: the boot sector changed"
    );
    for lba in 1..=WRITTEN {
        assert!(
            disk[lba * 512..(lba + 1) * 512]
                .iter()
                .all(|b| *b == 0xD0 + lba as u8),
            "{what}: sector {lba} was not written"
        );
    }
    assert!(
        disk[(WRITTEN + 1) * 512..].iter().all(|b| *b == 0),
        "{what}: sectors past {WRITTEN} changed"
    );
    assert_nothing_left(mark, &what);
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&serial_file);
}

/// Every way a VM ends (the guest halts, powers off, resets, leaves through debug-exit,
/// crashes; the timeout; a stop signal; the parent killed) with the serial output to a pipe
/// and to a file: the exit code is right, the output is whole (the guest's last bytes are
/// a line without its end, still in the VMM's buffer when a guest ends at once), the
/// sectors the guest wrote with `,rw` are on disk, and no process is left.
#[test]
fn every_exit_path_leaves_whole_output_written_sectors_and_no_process() {
    if !kvm_available() {
        return;
    }
    let _turn = turn();
    let mark = mark("exit-paths");
    let images =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("load-{}", std::process::id()));
    std::fs::create_dir_all(&images).expect("image directory");
    for path in exit_paths() {
        let end = match path.end {
            End::Guest(e) => e,
            _ => SPIN,
        };
        let image = boot_sector("ending", &[("END", end), ("LINES", LINES)]);
        for output in [Output::Pipe, Output::File] {
            run_exit_path(&path, output, &images, &image, &mark);
        }
    }
    let _ = std::fs::remove_dir_all(&images);
}
