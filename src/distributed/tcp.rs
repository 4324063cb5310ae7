//! Host collectives over TCP, star-shaped through rank 0.
//!
//! Every run of several ranks uses them: to meet (rank 0 listens on MASTER_ADDR:MASTER_PORT,
//! the others connect), to hand out NCCL's unique id, and for the few values each step
//! shares (loss sums, token counts, the stop flag). Where NCCL is not used (CPU ranks, or
//! `LORATUNE_COLLECTIVES=host`) they carry the gradients too.
//!
//! Rank 0 adds the contributions in rank order, so every rank gets the same bits whatever
//! order they arrive in. Each frame carries the collective's sequence number and kind:
//! ranks that fall out of step get an error naming both collectives, not a hang or a sum
//! of unrelated buffers.

use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = *b"LTDP";
const PROTOCOL: u32 = 1;
/// Bytes of a frame header: kind (u64), sequence number (u64), payload length (u64).
const HEADER: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SumF32 = 1,
    SumF64 = 2,
    Broadcast = 3,
}

impl Kind {
    fn from_u64(v: u64) -> Option<Kind> {
        match v {
            1 => Some(Kind::SumF32),
            2 => Some(Kind::SumF64),
            3 => Some(Kind::Broadcast),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::SumF32 => "an f32 all-reduce",
            Kind::SumF64 => "an f64 all-reduce",
            Kind::Broadcast => "a broadcast",
        }
    }
}

/// One rank's end of the group's TCP links.
pub struct TcpGroup {
    rank: usize,
    world_size: usize,
    state: Mutex<Links>,
}

struct Links {
    /// Rank 0: the stream of rank r at index r - 1. Other ranks: one stream, to rank 0.
    streams: Vec<TcpStream>,
    /// Collectives completed on this rank.
    seq: u64,
}

fn resolve(addr: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        (addr, port).to_socket_addrs().with_context(|| format!("MASTER_ADDR {addr}: cannot resolve it"))?.collect();
    anyhow::ensure!(!addrs.is_empty(), "MASTER_ADDR {addr}: resolves to no address");
    Ok(addrs)
}

fn write_u32s(s: &mut TcpStream, v: &[u32]) -> std::io::Result<()> {
    let mut buf = MAGIC.to_vec();
    v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
    s.write_all(&buf)
}

fn read_hello(s: &mut TcpStream, n: usize) -> std::io::Result<Option<Vec<u32>>> {
    let mut buf = vec![0u8; 4 + 4 * n];
    s.read_exact(&mut buf)?;
    if buf[..4] != MAGIC {
        return Ok(None);
    }
    Ok(Some(buf[4..].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
}

impl TcpGroup {
    /// Meets the other ranks: rank 0 listens on `addr:port` and waits for the other
    /// `world_size - 1`; the others connect, retrying until `timeout` (rank 0 may still be
    /// starting). Each side checks the other is a loratune rank of the same group size.
    pub fn connect(rank: usize, world_size: usize, addr: &str, port: u16, timeout: Duration) -> Result<TcpGroup> {
        anyhow::ensure!(world_size >= 1 && rank < world_size, "rank {rank} is not below the world size {world_size}");
        let deadline = Instant::now() + timeout;
        let streams = if rank == 0 {
            Self::accept_all(world_size, addr, port, deadline, timeout)?
        } else {
            vec![Self::dial(rank, world_size, addr, port, deadline, timeout)?]
        };
        for s in &streams {
            s.set_nodelay(true)?;
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
        }
        Ok(TcpGroup { rank, world_size, state: Mutex::new(Links { streams, seq: 0 }) })
    }

    fn accept_all(
        world_size: usize,
        addr: &str,
        port: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<TcpStream>> {
        let mut slots: Vec<Option<TcpStream>> = (1..world_size).map(|_| None).collect();
        if world_size == 1 {
            return Ok(Vec::new());
        }
        let addrs = resolve(addr, port)?;
        let listener = TcpListener::bind(&addrs[..]).with_context(|| {
            format!("rank 0 cannot listen on {addr}:{port} (MASTER_ADDR:MASTER_PORT): is the port in use, or is MASTER_ADDR not an address of this machine?")
        })?;
        listener.set_nonblocking(true)?;
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let hello = match read_hello(&mut s, 3) {
                        Ok(Some(h)) => h,
                        // A stray connection (a port scanner, a health check): not a rank.
                        Ok(None) | Err(_) => continue,
                    };
                    let (proto, r, w) = (hello[0], hello[1] as usize, hello[2] as usize);
                    if proto != PROTOCOL {
                        bail!("a rank at {peer} speaks loratune's rendezvous protocol {proto}, this one {PROTOCOL}: every rank must run the same loratune");
                    }
                    if w != world_size {
                        bail!("rank {r} at {peer} has WORLD_SIZE={w}, rank 0 has {world_size}: every rank must be given the same world size");
                    }
                    if r == 0 || r >= world_size {
                        bail!(
                            "a rank at {peer} says it is rank {r}; ranks of this group are 1..{} besides rank 0",
                            world_size - 1
                        );
                    }
                    if slots[r - 1].is_some() {
                        bail!("two processes say they are rank {r} (the second from {peer}): each rank must be started once");
                    }
                    write_u32s(&mut s, &[PROTOCOL, 0, world_size as u32])?;
                    slots[r - 1] = Some(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        bail!(
                            "rank 0 waited {}s on {addr}:{port} and rank(s) {} never connected (set LORATUNE_RENDEZVOUS_TIMEOUT to wait longer)",
                            timeout.as_secs(),
                            missing.join(", ")
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accepting a rank's connection"),
            }
        }
        Ok(slots.into_iter().map(|s| s.expect("all connected")).collect())
    }

    fn dial(
        rank: usize,
        world_size: usize,
        addr: &str,
        port: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<TcpStream> {
        let addrs = resolve(addr, port)?;
        let mut last_err = None;
        loop {
            for a in &addrs {
                match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        s.set_read_timeout(Some(
                            deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)),
                        ))?;
                        write_u32s(&mut s, &[PROTOCOL, rank as u32, world_size as u32])?;
                        match read_hello(&mut s, 3) {
                            Ok(Some(ack)) if ack[0] == PROTOCOL && ack[2] as usize == world_size => return Ok(s),
                            Ok(_) => bail!("{addr}:{port} answered, but not as rank 0 of a loratune group of {world_size}: is another program on MASTER_PORT?"),
                            // Rank 0 closed on us: it refused this rank; its error says why.
                            Err(e) => bail!("rank 0 at {addr}:{port} dropped rank {rank}'s connection ({e}); see rank 0's error"),
                        }
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "rank {rank} could not reach rank 0 at {addr}:{port} within {}s ({}): check MASTER_ADDR and MASTER_PORT, and that rank 0 started",
                    timeout.as_secs(),
                    last_err.map(|e| e.to_string()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Element-wise sum over ranks, in place; every rank ends with rank 0's result.
    pub fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.sum(
            Kind::SumF32,
            values,
            |x| x.to_le_bytes().to_vec(),
            |b| f32::from_le_bytes(b.try_into().expect("4 bytes")),
            |a, b| a + b,
        )
    }

    /// Element-wise sum over ranks, in place; every rank ends with rank 0's result.
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum(
            Kind::SumF64,
            values,
            |x| x.to_le_bytes().to_vec(),
            |b| f64::from_le_bytes(b.try_into().expect("8 bytes")),
            |a, b| a + b,
        )
    }

    fn sum<T: Copy>(
        &self,
        kind: Kind,
        values: &mut [T],
        put: impl Fn(T) -> Vec<u8>,
        get: impl Fn(&[u8]) -> T,
        add: impl Fn(T, T) -> T,
    ) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        let size = std::mem::size_of::<T>();
        let mut links = self.state.lock().expect("no rank thread panics holding the links");
        links.seq += 1;
        let seq = links.seq;
        let len = std::mem::size_of_val(values) as u64;
        let encode = |v: &[T]| -> Vec<u8> { v.iter().flat_map(|&x| put(x)).collect() };
        if self.rank == 0 {
            let mut payload = vec![0u8; len as usize];
            for (i, s) in links.streams.iter_mut().enumerate() {
                let r = i + 1;
                expect_header(s, r, kind, seq, Some(len))?;
                read_exact(s, &mut payload, r)?;
                for (v, b) in values.iter_mut().zip(payload.chunks_exact(size)) {
                    *v = add(*v, get(b));
                }
            }
            let frame = frame(kind, seq, &encode(values));
            for (i, s) in links.streams.iter_mut().enumerate() {
                write_all(s, &frame, i + 1)?;
            }
        } else {
            let s = &mut links.streams[0];
            write_all(s, &frame(kind, seq, &encode(values)), 0)?;
            expect_header(s, 0, kind, seq, Some(len))?;
            let mut payload = vec![0u8; len as usize];
            read_exact(s, &mut payload, 0)?;
            for (v, b) in values.iter_mut().zip(payload.chunks_exact(size)) {
                *v = get(b);
            }
        }
        Ok(())
    }

    /// Rank 0's `bytes` on every rank (the others' input is replaced).
    pub fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        let mut links = self.state.lock().expect("no rank thread panics holding the links");
        links.seq += 1;
        let seq = links.seq;
        if self.rank == 0 {
            let frame = frame(Kind::Broadcast, seq, bytes);
            for (i, s) in links.streams.iter_mut().enumerate() {
                write_all(s, &frame, i + 1)?;
            }
        } else {
            let s = &mut links.streams[0];
            let len = expect_header(s, 0, Kind::Broadcast, seq, None)?;
            bytes.resize(len as usize, 0);
            read_exact(s, bytes, 0)?;
        }
        Ok(())
    }
}

fn frame(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&(kind as u64).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn gone(peer: usize, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            anyhow::anyhow!("rank {peer} closed its connection: it stopped (its own error says why)")
        }
        _ => anyhow::anyhow!("talking to rank {peer}: {e}"),
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8], peer: usize) -> Result<()> {
    s.read_exact(buf).map_err(|e| gone(peer, e))
}

fn write_all(s: &mut TcpStream, buf: &[u8], peer: usize) -> Result<()> {
    s.write_all(buf).map_err(|e| gone(peer, e))
}

/// Reads a frame header from `peer` and checks it is the collective this rank is at.
/// Returns the payload length.
fn expect_header(s: &mut TcpStream, peer: usize, kind: Kind, seq: u64, len: Option<u64>) -> Result<u64> {
    let mut h = [0u8; HEADER];
    read_exact(s, &mut h, peer)?;
    let word = |i: usize| u64::from_le_bytes(h[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    let (their_kind, their_seq, their_len) = (Kind::from_u64(word(0)), word(1), word(2));
    let Some(their_kind) = their_kind else {
        bail!("rank {peer} sent a frame of unknown kind {}: is every rank the same loratune?", word(0))
    };
    if their_kind != kind || their_seq != seq {
        bail!(
            "ranks out of step: this rank is at collective #{seq} ({}) while rank {peer} is at #{their_seq} ({}); every rank must run the same steps",
            kind.name(),
            their_kind.name()
        );
    }
    if let Some(len) = len {
        if their_len != len {
            bail!("rank {peer} sent {their_len} bytes to collective #{seq} ({}), this rank {len}: the ranks hold different tensors", kind.name());
        }
    }
    Ok(their_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Runs `f(group)` on `n` threads, one per rank, and returns their results by rank.
    fn on_ranks<T: Send + 'static>(
        n: usize,
        f: impl Fn(TcpGroup) -> Result<T> + Send + Sync + 'static,
    ) -> Vec<Result<T>> {
        let port = free_port();
        let f = Arc::new(f);
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let f = f.clone();
                std::thread::spawn(move || {
                    TcpGroup::connect(r, n, "127.0.0.1", port, Duration::from_secs(20)).and_then(|g| f(g))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_and_broadcasts_reach_every_rank() {
        let out = on_ranks(3, |g| {
            let r = g.rank() as f64;
            let mut a = vec![r, 10.0 * r, 0.5];
            g.sum_f64(&mut a)?;
            let mut b: Vec<f32> = (0..1000).map(|i| (i as f32) * (r as f32 + 1.0)).collect();
            g.sum_f32(&mut b)?;
            let mut bytes = if g.rank() == 0 { b"nccl id".to_vec() } else { vec![9; 3] };
            g.broadcast(&mut bytes)?;
            Ok((a, b, bytes))
        });
        for o in out {
            let (a, b, bytes) = o.unwrap();
            assert_eq!(a, vec![3.0, 30.0, 1.5]);
            assert!(b.iter().enumerate().all(|(i, &x)| x == 6.0 * i as f32));
            assert_eq!(bytes, b"nccl id");
        }
    }

    #[test]
    fn a_single_rank_needs_no_peers() {
        let g = TcpGroup::connect(0, 1, "127.0.0.1", free_port(), Duration::from_secs(1)).unwrap();
        let mut v = vec![1.5f32];
        g.sum_f32(&mut v).unwrap();
        assert_eq!(v, vec![1.5]);
    }

    #[test]
    fn ranks_out_of_step_get_an_error_naming_both_collectives() {
        let out = on_ranks(2, |g| if g.rank() == 0 { g.sum_f64(&mut [1.0]) } else { g.sum_f32(&mut [1.0]) });
        let msg = format!("{:#}", out[0].as_ref().unwrap_err());
        assert!(
            msg.contains("ranks out of step") && msg.contains("f64 all-reduce") && msg.contains("f32 all-reduce"),
            "{msg}"
        );
        assert!(out[1].is_err());
    }

    #[test]
    fn a_rank_that_stops_is_named() {
        let out = on_ranks(2, |g| {
            if g.rank() == 1 {
                return Ok(()); // leaves without taking part: its connection closes
            }
            g.sum_f64(&mut [1.0])
        });
        let msg = format!("{:#}", out[0].as_ref().unwrap_err());
        assert!(msg.contains("rank 1 closed its connection"), "{msg}");
    }

    #[test]
    fn a_missing_rank_times_out_with_its_number() {
        let err = TcpGroup::connect(0, 3, "127.0.0.1", free_port(), Duration::from_millis(300)).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains("rank(s) 1, 2 never connected"), "{msg}");
        let err = TcpGroup::connect(1, 2, "127.0.0.1", free_port(), Duration::from_millis(300)).err().unwrap();
        assert!(format!("{err:#}").contains("could not reach rank 0"), "{err:#}");
    }

    #[test]
    fn mismatched_world_sizes_are_refused() {
        let port = free_port();
        let root =
            std::thread::spawn(move || TcpGroup::connect(0, 2, "127.0.0.1", port, Duration::from_secs(20)).map(|_| ()));
        let other = TcpGroup::connect(1, 3, "127.0.0.1", port, Duration::from_secs(20));
        let msg = format!("{:#}", root.join().unwrap().unwrap_err());
        assert!(msg.contains("WORLD_SIZE=3, rank 0 has 2"), "{msg}");
        assert!(other.is_err());
    }
}
