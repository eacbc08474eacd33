//! What a volunteer reads from a Blender process: its stdout, split into Blender's own lines (kept for error
//! reports) and the driver's replies (`worker::read_lines`), each reply parsed by `worker::parse_reply`. The pipe is
//! the rest of the input, handed over in reads of (first byte % 16 + 1) bytes.
//!
//! Besides not panicking, the reader must drain the pipe to its end whatever Blender prints: a reader that stops
//! early leaves Blender blocked on a full pipe, and the frame hangs until its time limit.
#![no_main]

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use blenderdist::worker::{parse_reply, read_lines, Tail};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A pipe that hands out at most `chunk` bytes per read, like a real pipe written in pieces.
struct Pipe<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Pipe<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let mut pipe = Pipe { data: rest, chunk: usize::from(chunk % 16) + 1 };
    let tail: Tail = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = read_lines(&mut pipe, tail.clone(), Some(tx));
    let consumer = async {
        let mut replies = 0usize;
        while let Some(json) = rx.recv().await {
            assert!(!json.contains('\n'), "a reply is one line");
            let _ = parse_reply(&json);
            replies += 1;
        }
        replies
    };
    let (_, replies) = futures::executor::block_on(async { futures::join!(reader, consumer) });
    assert!(replies <= rest.len());
    assert!(tail.lock().unwrap().len() <= 25);
    assert!(pipe.data.is_empty(), "the reader stopped with {} bytes of Blender's output unread", pipe.data.len());
});
