//! The send queue of one connection: encoded frames waiting for the
//! socket.
//!
//! A list of chunks rather than one growing buffer: appending never moves
//! what is already queued (no reallocation of megabytes, no compaction),
//! a write takes several chunks at once (`writev`), and written chunks are
//! recycled so a steady stream allocates nothing.

use std::collections::VecDeque;

/// Size of a regular chunk; larger frames get a chunk of their own size.
const CHUNK: usize = 64 * 1024;
/// Largest first chunk of an empty queue: most connections send small
/// messages, one at a time.
const FIRST_CHUNK: usize = 4 * 1024;
const MIN_CHUNK: usize = 256;
/// Chunks handed to one `writev`.
pub const MAX_IOV: usize = 64;
/// Written chunks kept for reuse while the connection is busy (4 MiB):
/// refilling a large queue then costs no allocation and no page faults.
const MAX_SPARE: usize = 64;
/// Largest frame chunk kept for reuse (see `TxQueue::big_spare`).
const BIG_SPARE_MAX: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct TxQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes queued and not written.
    len: usize,
    /// Written chunks kept for reuse (all of capacity `CHUNK` or less).
    spare: Vec<Vec<u8>>,
    /// One written chunk of a large frame (above `CHUNK`, at most
    /// `BIG_SPARE_MAX`), kept for the next large frame: a stream of big
    /// messages then reuses one buffer instead of faulting in fresh pages
    /// for every message.
    big_spare: Vec<u8>,
}

impl TxQueue {
    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A buffer to append at most `room` bytes to, at the tail of the
    /// queue; call `appended` with the bytes actually added.
    pub fn tail(&mut self, room: usize) -> &mut Vec<u8> {
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.capacity() - c.len() >= room);
        if !fits {
            // The first chunk fits the message (small messages stay small);
            // a queue that already holds data is in a burst: go big.
            let want = if self.chunks.is_empty() {
                room.next_power_of_two()
                    .clamp(MIN_CHUNK, FIRST_CHUNK)
                    .max(room)
            } else {
                CHUNK.max(room)
            };
            let chunk = if want > CHUNK && self.big_spare.capacity() >= want {
                std::mem::take(&mut self.big_spare)
            } else {
                match self.spare.last() {
                    Some(c) if c.capacity() >= want => self.spare.pop().expect("checked"),
                    // A small spare is not worth keeping once bigger ones are needed.
                    Some(c) if c.capacity() < CHUNK => {
                        self.spare.pop();
                        Vec::with_capacity(want)
                    }
                    _ => Vec::with_capacity(want),
                }
            };
            self.chunks.push_back(chunk);
        }
        self.chunks.back_mut().expect("a chunk was just ensured")
    }

    /// Records that `n` bytes were appended through `tail`.
    pub fn appended(&mut self, n: usize) {
        self.len += n;
    }

    /// Appends with `f`, which may add at most `room` bytes.
    pub fn append_with(&mut self, room: usize, f: impl FnOnce(&mut Vec<u8>)) {
        let buf = self.tail(room);
        let before = buf.len();
        f(buf);
        let added = buf.len() - before;
        self.appended(added);
    }

    /// Appends bytes as they are.
    pub fn push(&mut self, bytes: &[u8]) {
        self.append_with(bytes.len(), |b| b.extend_from_slice(bytes));
    }

    /// The front chunk's unwritten bytes.
    pub fn front(&self) -> &[u8] {
        match self.chunks.front() {
            Some(c) => &c[self.head..],
            None => &[],
        }
    }

    /// Fills `iov` with the unwritten bytes, front first; returns how many
    /// entries were used.
    pub fn iovecs(&self, iov: &mut [libc::iovec]) -> usize {
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let s = if i == 0 { &c[self.head..] } else { &c[..] };
            if s.is_empty() {
                continue;
            }
            iov[n] = libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            let done = self.chunks.pop_front().expect("front exists");
            self.recycle(done);
        }
        if self.len == 0 {
            while let Some(c) = self.chunks.pop_back() {
                self.recycle(c);
            }
            self.head = 0;
        }
    }

    fn recycle(&mut self, mut c: Vec<u8>) {
        // Regular chunks only: a 16 MiB frame's chunk goes back at once.
        if c.capacity() <= CHUNK {
            if self.spare.len() < MAX_SPARE {
                c.clear();
                self.spare.push(c);
            }
        } else if c.capacity() <= BIG_SPARE_MAX && c.capacity() > self.big_spare.capacity() {
            c.clear();
            self.big_spare = c;
        }
    }

    /// Gives back what a large frame or a burst left for reuse: the big
    /// spare and all regular spares but one. False (nothing done) while
    /// data is queued: its chunks come back when written.
    pub fn shed(&mut self) -> bool {
        if self.len > 0 {
            return false;
        }
        self.big_spare = Vec::new();
        self.spare.truncate(1);
        self.spare.shrink_to_fit();
        true
    }

    /// Gives all memory back (idle connection).
    pub fn trim(&mut self) {
        if self.len == 0 {
            self.chunks = VecDeque::new();
            self.spare = Vec::new();
            self.big_spare = Vec::new();
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_chunks() {
        let mut q = TxQueue::default();
        let mut expect = Vec::new();
        for i in 0..5000u32 {
            let msg: Vec<u8> = (0..(i % 700) as usize)
                .map(|j| (i as usize + j) as u8)
                .collect();
            q.push(&msg);
            expect.extend_from_slice(&msg);
        }
        let big = vec![7u8; 200_000];
        q.push(&big);
        expect.extend_from_slice(&big);
        assert_eq!(q.len(), expect.len());
        let mut got = Vec::new();
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        let mut step = 1usize;
        while !q.is_empty() {
            let n = q.iovecs(&mut iov);
            assert!(n > 0);
            // Take an odd amount, possibly ending inside a chunk.
            let mut take = step.min(q.len());
            let mut taken = 0;
            for v in &iov[..n] {
                let k = take.min(v.iov_len);
                // SAFETY: the iovec points into the queue's live chunks.
                got.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, k)
                });
                take -= k;
                taken += k;
                if take == 0 {
                    break;
                }
            }
            q.consume(taken);
            step = step * 7 % 100_003 + 1;
        }
        assert_eq!(got, expect);
        q.trim();
        assert!(q.chunks.is_empty() && q.spare.is_empty());
    }

    #[test]
    fn steady_stream_reuses_chunks() {
        let mut q = TxQueue::default();
        for _ in 0..300 {
            q.push(&[1; 640]);
        }
        let n = q.len();
        q.consume(n);
        let spare: Vec<*const u8> = q.spare.iter().map(|s| s.as_ptr()).collect();
        assert!(!spare.is_empty());
        for _ in 0..300 {
            q.push(&[2; 640]);
        }
        assert!(
            q.chunks.iter().skip(1).all(|c| spare.contains(&c.as_ptr())),
            "spare chunks are reused"
        );
    }

    #[test]
    fn large_frames_reuse_one_big_chunk_until_trimmed() {
        let mut q = TxQueue::default();
        let big = vec![3u8; 1 << 20];
        q.push(&[0; 10]); // a small first chunk, then the large frame
        q.push(&big);
        let first = q.chunks.back().unwrap().as_ptr();
        q.consume(q.len());
        assert_eq!(q.big_spare.as_ptr(), first, "kept after it was written");
        q.push(&[0; 10]);
        q.push(&big);
        assert_eq!(
            q.chunks.back().unwrap().as_ptr(),
            first,
            "reused for the next"
        );
        assert_eq!(q.front(), &[0u8; 10][..]);
        q.consume(q.len());
        // Above the cap a chunk is not kept; a quiet connection drops all.
        q.push(&[0; 10]);
        q.push(&vec![4u8; BIG_SPARE_MAX + 1]);
        q.consume(q.len());
        assert_eq!(q.big_spare.as_ptr(), first);
        q.trim();
        assert_eq!(q.big_spare.capacity(), 0);
    }

    #[test]
    fn shed_keeps_one_spare_and_waits_for_queued_data() {
        let mut q = TxQueue::default();
        for _ in 0..1000 {
            q.push(&[5; 640]);
        }
        q.push(&vec![6u8; 1 << 20]);
        assert!(!q.shed(), "nothing is shed while data is queued");
        q.consume(q.len());
        assert!(q.spare.len() > 1 && q.big_spare.capacity() > 0);
        assert!(q.shed());
        assert_eq!(q.spare.len(), 1);
        assert_eq!(q.big_spare.capacity(), 0);
        q.push(&[7; 100]);
        assert_eq!(q.front(), &[7u8; 100][..], "still usable");
    }
}
