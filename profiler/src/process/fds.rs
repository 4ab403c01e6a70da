//! What an open fd of a process is, as `lsof` would say it: a file's path,
//! a socket's protocol, local and peer address and state (from the
//! process's own network namespace, `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`),
//! a pipe's or an anonymous inode's name. Read at report time, while the
//! process holds the fd.

use std::{collections::HashMap, net::IpAddr};

/// Largest `/proc/PID/net/*` table read (about 100k sockets).
const MAX_TABLE_BYTES: u64 = 16 << 20;

/// Describes fds, reading each process's socket tables once. A disabled
/// one (`FdDescriber::off()`) reads nothing and describes an fd by its number.
#[derive(Default)]
pub struct FdDescriber {
    off: bool,
    /// Sockets by inode, per process (its network namespace's tables).
    sockets: HashMap<u32, HashMap<u64, String>>,
}

impl FdDescriber {
    /// `fd N: /var/log/app.log`, `fd N: tcp 127.0.0.1:41234 -> 127.0.0.1:8080 established`;
    /// `fd N` when the fd is gone (or the process), or the describer is off.
    pub fn describe(&mut self, pid: u32, fd: u64) -> String {
        self.what(pid, fd).map_or_else(|| format!("fd {fd}"), |what| format!("fd {fd}: {}", printable(&what)))
    }

    fn what(&mut self, pid: u32, fd: u64) -> Option<String> {
        if self.off {
            return None;
        }
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        let what = match socket_inode(&link) {
            Some(inode) => self
                .sockets
                .entry(pid)
                .or_insert_with(|| read_socket_tables(pid))
                .get(&inode)
                .cloned()
                .unwrap_or_else(|| link.to_string()),
            None => link.to_string(),
        };
        Some(what)
    }
}

/// `s` with control characters shown as `lsof` shows them (`^J`, `\x1b`):
/// a file or socket name is the target's to choose, and must not forge
/// report lines or reach the terminal as escape sequences.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{1}'..='\u{1a}' => {
                out.push('^');
                out.push((b'@' + c as u8) as char);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl FdDescriber {
    /// Describes nothing (a report on every sample need not readlink every fd).
    pub fn off() -> Self {
        Self { off: true, ..Default::default() }
    }
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn read_socket_tables(pid: u32) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for (file, protocol) in [("tcp", "tcp"), ("tcp6", "tcp6"), ("udp", "udp"), ("udp6", "udp6")] {
        if let Some(text) = read_bounded(&format!("/proc/{pid}/net/{file}")) {
            out.extend(parse_inet_table(&text, protocol));
        }
    }
    if let Some(text) = read_bounded(&format!("/proc/{pid}/net/unix")) {
        out.extend(parse_unix_table(&text));
    }
    out
}

/// The file's text, invalid UTF-8 replaced (a name is not one line's to break).
fn read_bounded(path: &str) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(MAX_TABLE_BYTES).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "established",
        "02" => "syn-sent",
        "03" => "syn-recv",
        "04" => "fin-wait1",
        "05" => "fin-wait2",
        "06" => "time-wait",
        "07" => "close",
        "08" => "close-wait",
        "09" => "last-ack",
        "0A" => "listen",
        "0B" => "closing",
        _ => "unknown state",
    }
}

/// One line of a `/proc/net/tcp`-style table.
struct InetRow {
    inode: u64,
    local: String,
    remote: String,
    /// The kernel's state code (`0A` is listening, for TCP).
    state: String,
}

/// `/proc/net/tcp`-style lines: `sl local rem st ... uid timeout inode`.
fn inet_rows(text: &str) -> impl Iterator<Item = InetRow> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
        Some(InetRow {
            inode: inode.parse().ok()?,
            local: inet_address(local)?,
            remote: inet_address(remote)?,
            state: state.to_string(),
        })
    })
}

fn parse_inet_table(text: &str, protocol: &str) -> Vec<(u64, String)> {
    inet_rows(text)
        .map(|InetRow { inode, local, remote, state }| {
            let what = if protocol.starts_with("tcp") {
                match tcp_state(&state) {
                    "listen" => format!("{protocol} {local} (listening)"),
                    state => format!("{protocol} {local} -> {remote} {state}"),
                }
            } else if remote.ends_with(":0") {
                format!("{protocol} {local}")
            } else {
                format!("{protocol} {local} -> {remote}")
            };
            (inode, what)
        })
        .collect()
}

/// The TCP ports process `pid` listens on at 127.0.0.1 (in its own network
/// namespace), from the sockets it holds.
pub fn loopback_listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let held: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| socket_inode(&link.to_string_lossy()))
        .collect();
    loopback_listening(pid, |inode| held.contains(&inode))
}

/// The TCP ports any process listens on at 127.0.0.1 in `pid`'s network namespace.
pub fn loopback_listening_ports_in_namespace(pid: u32) -> Vec<u16> {
    loopback_listening(pid, |_| true)
}

fn loopback_listening(pid: u32, socket: impl Fn(u64) -> bool) -> Vec<u16> {
    let Some(text) = read_bounded(&format!("/proc/{pid}/net/tcp")) else { return Vec::new() };
    let mut ports: Vec<u16> = inet_rows(&text)
        .filter(|row| row.state == "0A" && socket(row.inode))
        .filter_map(|row| row.local.strip_prefix("127.0.0.1:")?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `0100007F:1F90` -> `127.0.0.1:8080`; IPv6 as four little-endian words.
fn inet_address(field: &str) -> Option<String> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: IpAddr = match addr.len() {
        8 => u32::from_str_radix(addr, 16).ok()?.swap_bytes().to_be_bytes().into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
                let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => v4.into(),
                None => v6.into(),
            }
        }
        _ => return None,
    };
    Some(match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    })
}

/// `/proc/net/unix` lines: `Num RefCount Protocol Flags Type St Inode [Path]`.
/// The path is the rest of the line (it may hold spaces). The kernel does
/// not escape a newline in a path, so a path can forge a line: an inode seen
/// twice is described without a path.
fn parse_unix_table(text: &str) -> Vec<(u64, String)> {
    let mut seen: HashMap<u64, String> = HashMap::new();
    let mut forged = std::collections::HashSet::new();
    for line in text.lines().skip(1) {
        let mut rest = line.trim_start();
        let mut f = Vec::with_capacity(7);
        while f.len() < 7 {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            f.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        let Ok(inode) = f[6].parse::<u64>() else { continue };
        let kind = match f[4] {
            "0001" => "stream",
            "0002" => "dgram",
            "0005" => "seqpacket",
            _ => "other",
        };
        let what = if rest.is_empty() { format!("unix {kind}") } else { format!("unix {kind} {rest}") };
        if seen.insert(inode, what).is_some() {
            forged.insert(inode);
        }
    }
    seen.into_iter()
        .map(
            |(inode, what)| {
                if forged.contains(&inode) {
                    (inode, "unix socket".to_string())
                } else {
                    (inode, what)
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_lines_name_both_ends_and_the_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:A0C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 20 4 30 10 -1\n";
        let t: HashMap<u64, String> = parse_inet_table(text, "tcp").into_iter().collect();
        assert_eq!(t[&1234], "tcp 127.0.0.1:8080 (listening)");
        assert_eq!(t[&5678], "tcp 127.0.0.1:41154 -> 127.0.0.1:8080 established");
    }

    #[test]
    fn ipv6_and_mapped_ipv4_addresses() {
        assert_eq!(inet_address("00000000000000000000000001000000:0050").unwrap(), "[::1]:80");
        assert_eq!(inet_address("0000000000000000FFFF00000100007F:0050").unwrap(), "127.0.0.1:80");
        assert!(inet_address("zz:1").is_none());
    }

    #[test]
    fn unix_lines_with_and_without_a_path() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/my app.sock\n0000000000000000: 00000003 00000000 00000000 0002 01 4343\n0000000000000000: 00000002 00000000 00010000 0001 01 4444 /tmp/x\n0000000000000000: 00000002 00000000 00010000 0001 01 4242 /forged\n";
        let t: HashMap<u64, String> = parse_unix_table(text).into_iter().collect();
        assert_eq!(t[&4343], "unix dgram");
        assert_eq!(t[&4444], "unix stream /tmp/x");
        assert_eq!(t[&4242], "unix socket", "an inode a path forged a second line for");
        assert_eq!(printable("a\nb\u{1b}[2J"), "a^Jb\\x1b[2J");
    }

    #[test]
    fn our_own_fds_are_described() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let mut d = FdDescriber::default();
        let pid = std::process::id();
        let sock = d.describe(pid, listener.as_raw_fd() as u64);
        assert!(sock.ends_with(&format!("tcp 127.0.0.1:{port} (listening)")), "{sock}");
        let path = d.describe(pid, file.as_raw_fd() as u64);
        assert!(path.ends_with("/status"), "{path}");
        assert_eq!(d.describe(pid, 1 << 20), "fd 1048576", "a closed fd is its number");
        assert_eq!(
            FdDescriber::off().describe(pid, file.as_raw_fd() as u64),
            format!("fd {}", file.as_raw_fd())
        );
    }
}
