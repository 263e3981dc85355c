//! A network namespace for an agent, joined to the test's own namespace by a veth pair, with
//! nftables rules inside it for packet loss and partitions (this kernel has no netem).
//!
//! The manager stays in the test's namespace (it reaches the suite's PostgreSQL on 127.0.0.1) and
//! listens on the near end of the pair; the agent runs inside the namespace and knows only the
//! far end. Every fault is a rule in the namespace's own nftables table, so nothing outside it
//! changes, and dropping the value deletes the namespace, its veth pair and its rules. Needs root
//! and `ip` (iproute2) and `nft` (nftables): deploy/dev/netfaults.sh installs them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails with its output when it fails.
fn run(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (install it with deploy/dev/netfaults.sh)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// What the namespace's nftables table does to the agent's traffic over the veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Every packet passes.
    Up,
    /// This percentage of packets is dropped, in each direction, at random.
    Loss(u32),
    /// Every packet is dropped: a partition, as a dead cellular link looks (no answer at all).
    Partitioned,
}

/// A network namespace with a veth pair to the test's namespace; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    /// The veth end in the test's namespace.
    pub host_link: String,
    /// The veth end inside the namespace.
    pub inner_link: String,
    /// The address of the near end (where the manager listens).
    pub host_address: Ipv4Addr,
    /// The address of the far end (the agent's).
    pub inner_address: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace, the pair, the addresses and an empty nftables table inside it.
    /// Names and a /30 subnet are unique to this process and call.
    pub fn create() -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, n);
        // Subnet 10.213.X.Y/30: X from the pid, Y from the call.
        let third = u8::try_from(pid % 250).unwrap_or(0);
        let fourth = u8::try_from((n % 63) * 4).unwrap_or(0);
        let ns = Self {
            name: format!("fleetlet-nf-{tag}"),
            host_link: format!("fnh{tag}"),
            inner_link: format!("fni{tag}"),
            host_address: Ipv4Addr::new(10, 213, third, fourth + 1),
            inner_address: Ipv4Addr::new(10, 213, third, fourth + 2),
        };
        // From here on, Drop removes whatever was made.
        run("ip", &["netns", "add", &ns.name], None)?;
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &ns.inner_link,
                "netns",
                &ns.name,
            ],
            None,
        )?;
        let host_cidr = format!("{}/30", ns.host_address);
        run(
            "ip",
            &["addr", "add", &host_cidr, "dev", &ns.host_link],
            None,
        )?;
        run("ip", &["link", "set", &ns.host_link, "up"], None)?;
        let inner_cidr = format!("{}/30", ns.inner_address);
        ns.exec("ip", &["addr", "add", &inner_cidr, "dev", &ns.inner_link])?;
        ns.exec("ip", &["link", "set", &ns.inner_link, "up"])?;
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        ns.set_link(Link::Up)?;
        Ok(ns)
    }

    /// Runs `program args` inside the namespace, failing with its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// Replaces the namespace's fault rules (table `inet fleetlet_faults`, on the veth end only,
    /// both directions) with those of `link`, atomically (one `nft -f`).
    pub fn set_link(&self, link: Link) -> anyhow::Result<()> {
        let verdict = match link {
            Link::Up => String::new(),
            Link::Loss(percent) => format!("numgen random mod 100 < {percent} drop"),
            Link::Partitioned => "drop".to_owned(),
        };
        let rule = |hook: &str, direction: &str| {
            if verdict.is_empty() {
                String::new()
            } else {
                format!(
                    "add rule inet fleetlet_faults {hook} {direction} \"{}\" {verdict}\n",
                    self.inner_link
                )
            }
        };
        // Adding then deleting the table makes the delete succeed whether it existed or not.
        let script = format!(
            "add table inet fleetlet_faults\ndelete table inet fleetlet_faults\n\
             add table inet fleetlet_faults\n\
             add chain inet fleetlet_faults input {{ type filter hook input priority 0; }}\n\
             add chain inet fleetlet_faults output {{ type filter hook output priority 0; }}\n\
             {}{}",
            rule("input", "iifname"),
            rule("output", "oifname"),
        );
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(&script),
        )
    }

    /// The namespace's TCP sockets as `ss -tnoi` lists them (state, queues, timers such as a
    /// SYN's retransmission, RTO), for a test to print what the agent holds at a given moment.
    pub fn tcp_sockets(&self) -> anyhow::Result<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "ss", "-tnoi", "state", "all"])
            .stdin(Stdio::null())
            .output()
            .context("running ss in the namespace")?;
        if !output.status.success() {
            bail!(
                "ss failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `command` (e.g. [`crate::agent::AgentOptions::command`]) run inside the namespace through
    /// `ip netns exec`, with the same environment, arguments and working directory.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args())
            .env_clear();
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                wrapped.env(key, value);
            }
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the pair; the explicit delete
        // of the near end covers a namespace that a stray process keeps alive.
        let _ = run("ip", &["netns", "del", &self.name], None);
        let _ = run("ip", &["link", "del", &self.host_link], None);
    }
}

/// A process started in a namespace (see [`NetNs::wrap`]) with its output in a log file;
/// killed on drop, before the namespace is (declare it after the [`NetNs`]).
#[derive(Debug)]
pub struct NsProcess {
    child: Child,
    log: PathBuf,
}

impl NsProcess {
    /// Spawns `command`, stdout and stderr appended to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning a process in the namespace")?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (to `ip netns exec`, which has exec'd the program) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
