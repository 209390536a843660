//! Parallel gzip, pigz's way: packing a layer is bound by deflate, and one core of a
//! build pod's few is not enough.
//!
//! The stream is cut into fixed-size blocks; each is raw-deflated on its own (on a
//! worker thread) with the previous block's last 32 KiB as preset dictionary, so the
//! ratio stays that of one stream, and ends with a sync flush (the last with finish), so
//! the pieces concatenate into one deflate stream. Block boundaries depend only on the
//! bytes, never on the threads or their timing: the same input gives the same blob.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Big enough that the dictionary priming and the flush marker cost little (~3% more
/// hashing, 5 bytes per block), small enough that a layer of a few MiB uses every core.
/// Never derived from the machine: the block size shapes the output.
pub const BLOCK_SIZE: usize = 256 << 10;

/// Deflate's window: more dictionary than this cannot be referenced.
const WINDOW: usize = 32 << 10;

/// A gzip writer that deflates blocks on worker threads and writes them, in order, to
/// `out` on the caller's thread (so `out` need not be `Send`, and hashes it sees stay
/// one pass). Memory is bounded: at most two blocks per worker are in flight.
pub struct ParGzEncoder<W: Write> {
    out: Option<W>,
    level: Compression,
    block_size: usize,
    workers: usize,
    /// The block being filled.
    block: Vec<u8>,
    /// The last `WINDOW` bytes of the previous block: the next block's dictionary.
    tail: Vec<u8>,
    /// Blocks handed to workers, oldest first, each with its own reply channel.
    in_flight: VecDeque<Receiver<io::Result<Done>>>,
    /// Buffers of written blocks, reused for the next ones.
    spare: Vec<Done>,
    crc: Crc,
    pool: Option<Pool>,
    /// Set once an error was returned: a stream with a hole must not be finished.
    failed: bool,
}

/// Workers pull jobs from one shared queue; dropping `jobs` stops them.
struct Pool {
    jobs: SyncSender<Job>,
    handles: Vec<JoinHandle<()>>,
}

struct Job {
    buffers: Done,
    reply: SyncSender<io::Result<Done>>,
}

/// A block's buffers: its bytes, its dictionary, its deflate output and CRC.
#[derive(Default)]
struct Done {
    data: Vec<u8>,
    dict: Vec<u8>,
    out: Vec<u8>,
    crc: Crc,
}

impl<W: Write> std::fmt::Debug for ParGzEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParGzEncoder")
            .field("level", &self.level.level())
            .field("block_size", &self.block_size)
            .field("workers", &self.workers)
            .field("in_flight", &self.in_flight.len())
            .field("bytes_in", &self.crc.amount())
            .finish_non_exhaustive()
    }
}

/// One worker per core the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl<W: Write> ParGzEncoder<W> {
    /// Writes the gzip header (mtime 0, no name, OS unknown: what flate2's `GzBuilder`
    /// writes, reproducible) to `out`. Levels are zlib's, 0-9.
    pub fn new(mut out: W, level: u32, workers: usize, block_size: usize) -> io::Result<Self> {
        if level > 9 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gzip level {level} is not in 0-9"),
            ));
        }
        assert!(block_size >= WINDOW, "blocks smaller than the window");
        let xfl = match level {
            9 => 2,
            0 | 1 => 4,
            _ => 0,
        };
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        Ok(ParGzEncoder {
            out: Some(out),
            level: Compression::new(level),
            block_size,
            workers: workers.max(1),
            block: Vec::new(),
            tail: Vec::new(),
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            crc: Crc::new(),
            pool: None,
            failed: false,
        })
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.guard(|gz| {
            // The caller would only wait for the workers: it deflates the last block.
            let mut last = gz.spare.pop().unwrap_or_default();
            last.data = mem::take(&mut gz.block);
            mem::swap(&mut last.dict, &mut gz.tail);
            let last = deflate_caught(gz.level, last, true)?;
            while let Some(reply) = gz.in_flight.pop_front() {
                gz.emit(receive(&reply)?)?;
            }
            gz.emit(last)?;
            let mut trailer = [0; 8];
            trailer[..4].copy_from_slice(&gz.crc.sum().to_le_bytes());
            trailer[4..].copy_from_slice(&gz.crc.amount().to_le_bytes());
            let out = gz.out.as_mut().expect("finished once");
            out.write_all(&trailer)?;
            out.flush()
        })?;
        Ok(self.out.take().expect("finished once"))
    }

    /// Runs `f`, remembering a failure so that no later call writes past a hole.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Err(io::Error::other("the gzip stream failed earlier"));
        }
        let result = f(self);
        self.failed = result.is_err();
        result
    }

    /// Hands the full block to a worker, keeping at most two blocks per worker in flight.
    fn submit(&mut self) -> io::Result<()> {
        let mut job = self.spare.pop().unwrap_or_default();
        job.data.clear();
        mem::swap(&mut job.data, &mut self.block);
        mem::swap(&mut job.dict, &mut self.tail);
        self.tail.clear();
        self.tail
            .extend_from_slice(&job.data[job.data.len().saturating_sub(WINDOW)..]);
        let (reply, receiver) = mpsc::sync_channel(1);
        let job = Job {
            buffers: job,
            reply,
        };
        let level = self.level;
        let workers = self.workers;
        let pool = self.pool.get_or_insert_with(|| Pool::start(level, workers));
        pool.jobs
            .send(job)
            .map_err(|_| io::Error::other("the gzip workers stopped"))?;
        self.in_flight.push_back(receiver);
        // Write what is done without waiting, then wait only to stay within the bound.
        while let Some(done) = self.in_flight.front().and_then(|r| r.try_recv().ok()) {
            self.in_flight.pop_front();
            self.emit(done?)?;
        }
        while self.in_flight.len() >= 2 * self.workers {
            let reply = self.in_flight.pop_front().expect("in flight");
            self.emit(receive(&reply)?)?;
        }
        Ok(())
    }

    /// Writes a compressed block (the next in order) and keeps its buffers.
    fn emit(&mut self, done: Done) -> io::Result<()> {
        self.out
            .as_mut()
            .expect("not finished")
            .write_all(&done.out)?;
        self.crc.combine(&done.crc);
        self.spare.push(done);
        Ok(())
    }
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.guard(|gz| {
            let mut rest = buf;
            while !rest.is_empty() {
                if gz.block.capacity() < gz.block_size {
                    gz.block.reserve_exact(gz.block_size - gz.block.len());
                }
                let n = rest.len().min(gz.block_size - gz.block.len());
                gz.block.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if gz.block.len() == gz.block_size {
                    gz.submit()?;
                }
            }
            Ok(buf.len())
        })
    }

    /// Flushes what is compressed; a partial block waits (a flush must not cut a block,
    /// or the output would depend on when the caller flushed).
    fn flush(&mut self) -> io::Result<()> {
        self.guard(|gz| gz.out.as_mut().map_or(Ok(()), |out| out.flush()))
    }
}

impl<W: Write> Drop for ParGzEncoder<W> {
    fn drop(&mut self) {
        // Stop the workers; each finishes at most its current block.
        self.in_flight.clear();
        if let Some(pool) = self.pool.take() {
            drop(pool.jobs);
            for handle in pool.handles {
                let _ = handle.join();
            }
        }
    }
}

impl Pool {
    fn start(level: Compression, workers: usize) -> Pool {
        let (jobs, queue) = mpsc::sync_channel::<Job>(2 * workers);
        let queue = Arc::new(Mutex::new(queue));
        let handles = (0..workers)
            .map(|n| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name(format!("layer-gzip-{n}"))
                    .spawn(move || work(&queue, level))
            })
            // A thread that cannot start leaves fewer workers, not none: the caller's
            // sends fail only if every one of them is gone.
            .filter_map(Result::ok)
            .collect();
        Pool { jobs, handles }
    }
}

fn work(queue: &Mutex<Receiver<Job>>, level: Compression) {
    loop {
        // The lock is held only to take a job, never while compressing.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let done = deflate_caught(level, job.buffers, false);
        // The writer may have gone (an error elsewhere): nothing to tell then.
        let _ = job.reply.send(done);
    }
}

fn receive(reply: &Receiver<io::Result<Done>>) -> io::Result<Done> {
    reply
        .recv()
        .map_err(|_| io::Error::other("a gzip worker stopped"))?
}

/// [`deflate_block`], with a panic of the compressor turned into an error.
fn deflate_caught(level: Compression, block: Done, last: bool) -> io::Result<Done> {
    catch_unwind(AssertUnwindSafe(|| deflate_block(level, block, last)))
        .unwrap_or_else(|_| Err(io::Error::other("the deflate compressor panicked")))
}

/// Raw-deflates one block into `block.out` from a fresh state primed with `block.dict`,
/// and its CRC: the output depends on the block and dictionary alone. The state is new
/// for every block because a reset one still remembers something of the block before
/// (zlib-rs at levels 1-3), and which block a worker did before depends on timing.
fn deflate_block(level: Compression, mut block: Done, last: bool) -> io::Result<Done> {
    let mut deflate = Compress::new_with_window_bits(level, false, 15);
    if !block.dict.is_empty() {
        deflate
            .set_dictionary(&block.dict)
            .map_err(io::Error::other)?;
    }
    let data = &block.data;
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let out = &mut block.out;
    out.clear();
    // Deflate grows incompressible data by 5 bytes per stored block at most.
    out.reserve(data.len() + data.len() / 256 + 256);
    loop {
        let (read, wrote) = (deflate.total_in(), deflate.total_out());
        let status = deflate
            .compress_vec(&data[read as usize..], out, flush)
            .map_err(io::Error::other)?;
        let consumed = deflate.total_in() as usize == data.len();
        // zlib's rule: a flush is complete once it returns with output space to spare.
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError if consumed && !last && out.len() < out.capacity() => {
                break;
            }
            _ if out.len() < out.capacity()
                && (deflate.total_in(), deflate.total_out()) == (read, wrote) =>
            {
                return Err(io::Error::other("deflate made no progress"));
            }
            _ => out.reserve(64 << 10),
        }
    }
    block.crc.reset();
    block.crc.update(data);
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::process::{Command, Stdio};

    /// Text-like runs and random bytes, so blocks both compress and do not.
    fn mixed(bytes: usize) -> Vec<u8> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(bytes);
        let words: [&[u8]; 6] = [
            b"layer ",
            b"digest ",
            b"fn main() {\n",
            b"the ",
            b"image ",
            b"0",
        ];
        while out.len() < bytes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed.is_multiple_of(7) {
                out.extend_from_slice(&seed.to_le_bytes());
                out.extend((0..300).map(|i| (seed >> (i % 57)) as u8));
            } else {
                out.extend_from_slice(words[(seed % 6) as usize]);
            }
        }
        out.truncate(bytes);
        out
    }

    fn compress(data: &[u8], level: u32, workers: usize, block: usize) -> Vec<u8> {
        let mut gz = ParGzEncoder::new(Vec::new(), level, workers, block).expect("header");
        // Uneven writes: block boundaries must not follow them.
        for chunk in data.chunks(7919) {
            gz.write_all(chunk).expect("write");
        }
        gz.finish().expect("finish")
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("flate2 gunzip");
        out
    }

    /// `gunzip -c` of the system: another implementation's opinion of the stream.
    fn system_gunzip(gz: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gzip");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = gz.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("gzip -d");
        feeder.join().expect("feeder").expect("feed gzip");
        assert!(
            out.status.success(),
            "gzip -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn output_is_the_same_for_any_number_of_workers() {
        // 64 KiB blocks: 3 MiB is 48 of them, and the last is partial.
        let data = mixed((3 << 20) + 12_345);
        for level in [0, 1, 2, 6, 9] {
            let one = compress(&data, level, 1, 64 << 10);
            for workers in [2, 4] {
                assert!(
                    one == compress(&data, level, workers, 64 << 10),
                    "level {level}: 1 and {workers} workers differ"
                );
            }
            assert!(
                one == compress(&data, level, 1, 64 << 10),
                "level {level}: run to run"
            );
            assert!(gunzip(&one) == data, "level {level}: flate2 round trip");
            assert!(
                system_gunzip(&one) == data,
                "level {level}: gzip -d round trip"
            );
        }
    }

    #[test]
    fn preset_dictionaries_keep_the_ratio_of_one_stream() {
        let data = mixed(2 << 20);
        let parallel = compress(&data, 6, 2, 64 << 10).len();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        one.write_all(&data).expect("write");
        let one = one.finish().expect("finish").len();
        // Without dictionaries 64 KiB blocks lose far more than this on repetitive data.
        assert!(
            parallel * 100 <= one * 101,
            "{parallel} bytes against {one}"
        );
    }

    #[test]
    fn empty_and_whole_block_inputs_are_valid_gzip() {
        for len in [0, 1, 64 << 10, 128 << 10, (128 << 10) + 1] {
            let data = mixed(len);
            let gz = compress(&data, 2, 2, 64 << 10);
            assert!(gunzip(&gz) == data, "{len} bytes: flate2");
            assert!(system_gunzip(&gz) == data, "{len} bytes: gzip -d");
        }
    }

    #[test]
    fn header_and_trailer_are_flate2s() {
        let data = mixed(300_000);
        let gz = compress(&data, 2, 2, 64 << 10);
        let mut reference = flate2::GzBuilder::new().write(Vec::new(), Compression::new(2));
        reference.write_all(&data).expect("write");
        let reference = reference.finish().expect("finish");
        assert_eq!(gz[..10], reference[..10], "header");
        assert_eq!(
            gz[gz.len() - 8..],
            reference[reference.len() - 8..],
            "trailer"
        );
        for level in [0, 1, 9] {
            let gz = compress(b"x", level, 1, 64 << 10);
            let mut reference = flate2::GzBuilder::new().write(Vec::new(), Compression::new(level));
            reference.write_all(b"x").expect("write");
            assert_eq!(gz[..10], reference.finish().expect("finish")[..10]);
        }
    }

    /// Accepts `room` bytes, then fails every write.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_writer_is_an_error_and_stays_one() {
        let data = mixed(1 << 20);
        let mut gz = ParGzEncoder::new(Full { room: 50_000 }, 2, 2, 64 << 10).expect("header");
        let error = data
            .chunks(10_000)
            .find_map(|chunk| gz.write_all(chunk).err())
            .expect("the writes fail");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert!(gz.write_all(b"more").is_err());
        assert!(gz.finish().is_err());

        // Failing in finish, and dropped with blocks in flight: no panic, no hang.
        let gz = ParGzEncoder::new(Full { room: 10 }, 2, 2, 64 << 10).expect("header");
        assert!(gz.finish().is_err());
        let mut gz = ParGzEncoder::new(Vec::new(), 2, 2, 64 << 10).expect("header");
        gz.write_all(&data).expect("write");
        drop(gz);
    }

    #[test]
    fn levels_outside_zlibs_are_refused() {
        let error = ParGzEncoder::new(Vec::new(), 10, 1, BLOCK_SIZE).expect_err("level 10");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
