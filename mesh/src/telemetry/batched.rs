//! Log output off the request path: formatted lines gather in memory and one thread writes them
//! out in batches — `delay` after the first line of a batch, or at once when `high_water` bytes
//! wait. Writing every access-log line straight to stdout cost one write(2) per request (and
//! whatever watches the file): 9 % of the waypoint's CPU under load. `tracing-appender`'s
//! non-blocking writer moves that write to a thread but wakes the thread per line; this wakes it
//! once per batch.
//!
//! Nothing is dropped: past `hard_cap` waiting bytes (the sink is slower than the logging) a
//! writer writes the backlog and its own line itself, so logging slows down as plain stdout
//! would. [`FlushGuard`] writes what is left when dropped; a SIGKILL loses at most one batch.

use std::{
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait, and how much may gather before a write.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub delay: Duration,
    pub high_water: usize,
    pub hard_cap: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self { delay: Duration::from_millis(50), high_water: 64 << 10, hard_cap: 4 << 20 }
    }
}

/// A [`MakeWriter`] for `tracing_subscriber::fmt` that batches its output. Cheap to clone.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Stops the writing thread after it wrote everything waiting. Keep it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    sink: Mutex<Box<dyn Write + Send>>,
    batching: Batching,
}

struct State {
    waiting: Vec<u8>,
    stop: bool,
}

impl BatchedWriter {
    /// Batches into the process's stdout.
    pub fn stdout() -> std::io::Result<(BatchedWriter, FlushGuard)> {
        Self::new(Box::new(std::io::stdout()), Batching::default())
    }

    pub fn new(sink: Box<dyn Write + Send>, batching: Batching) -> std::io::Result<(BatchedWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { waiting: Vec::new(), stop: false }),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
            batching,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || worker.run())?;
        Ok((BatchedWriter { shared: shared.clone() }, FlushGuard { shared, thread: Some(thread) }))
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: keep logging.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the sink. Order: the state lock (when held) before this one, so a batch taken
    /// out is written before any line that came after it.
    fn sink(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_out(sink: &mut MutexGuard<'_, Box<dyn Write + Send>>, bytes: &[u8]) {
        // As the plain stdout writer: a closed or failing stdout must not stop the proxy.
        let _ = sink.write_all(bytes).and_then(|()| sink.flush());
    }

    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut state = self.state();
            while state.waiting.is_empty() && !state.stop {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            // Let the batch fill for `delay`, unless it is already big or we are stopping.
            let deadline = Instant::now() + self.batching.delay;
            while !state.stop && state.waiting.len() < self.batching.high_water {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
                state = self.wake.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            let stop = state.stop;
            let mut sink = self.sink();
            std::mem::swap(&mut state.waiting, &mut spare);
            drop(state);
            if !spare.is_empty() {
                Self::write_out(&mut sink, &spare);
                spare.clear();
                // Keep a normal batch's capacity, not a burst's.
                spare.shrink_to(self.batching.high_water);
            }
            drop(sink);
            if stop && self.state().waiting.is_empty() {
                return;
            }
        }
    }
}

/// One event's output.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shared = self.0;
        let mut state = shared.state();
        if state.stop || state.waiting.len() + buf.len() > shared.batching.hard_cap {
            // Behind (or shutting down): write in order, here, rather than drop or grow.
            let mut sink = shared.sink();
            let backlog = std::mem::take(&mut state.waiting);
            Shared::write_out(&mut sink, &backlog);
            Shared::write_out(&mut sink, buf);
            return Ok(buf.len());
        }
        let first = state.waiting.is_empty();
        state.waiting.extend_from_slice(buf);
        let full = state.waiting.len() >= shared.batching.high_water;
        drop(state);
        if first || full {
            shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink recording each write call.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    fn lines(n: usize) -> String {
        (0..n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn many_lines_leave_in_a_few_writes_in_order_and_all_by_the_guards_drop() {
        let sink = Recorder::default();
        let batching = Batching { delay: Duration::from_secs(30), ..Batching::default() };
        let (writer, guard) = BatchedWriter::new(Box::new(sink.clone()), batching).unwrap();
        for i in 0..1000 {
            writer.make_writer().write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Well under the high-water mark and long before the delay: nothing written yet.
        assert_eq!(sink.writes(), 0);
        drop(guard);
        assert_eq!(sink.text(), lines(1000));
        assert_eq!(sink.writes(), 1, "one batch, one write");
    }

    #[test]
    fn a_lone_line_is_written_after_the_delay_without_a_shutdown() {
        let sink = Recorder::default();
        let batching = Batching { delay: Duration::from_millis(10), ..Batching::default() };
        let (writer, _guard) = BatchedWriter::new(Box::new(sink.clone()), batching).unwrap();
        writer.make_writer().write_all(b"hello\n").unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "hello\n");
    }

    #[test]
    fn past_the_high_water_mark_a_batch_leaves_without_waiting_for_the_delay() {
        let sink = Recorder::default();
        let batching = Batching { delay: Duration::from_secs(3600), high_water: 100, hard_cap: 1 << 20 };
        let (writer, _guard) = BatchedWriter::new(Box::new(sink.clone()), batching).unwrap();
        writer.make_writer().write_all(&[b'x'; 150]).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while sink.writes() == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text().len(), 150);
    }

    #[test]
    fn a_backlog_past_the_cap_is_written_by_the_logger_in_order_not_dropped() {
        let sink = Recorder::default();
        let batching = Batching { delay: Duration::from_secs(3600), high_water: 1 << 20, hard_cap: 64 };
        let (writer, guard) = BatchedWriter::new(Box::new(sink.clone()), batching).unwrap();
        for i in 0..20 {
            writer.make_writer().write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // The cap forced writes on the loggers' side before any batch was due.
        assert!(sink.writes() > 0);
        drop(guard);
        assert_eq!(sink.text(), lines(20));
    }

    #[test]
    fn lines_logged_after_the_guard_are_written_directly() {
        let sink = Recorder::default();
        let (writer, guard) = BatchedWriter::new(Box::new(sink.clone()), Batching::default()).unwrap();
        drop(guard);
        writer.make_writer().write_all(b"late\n").unwrap();
        assert_eq!(sink.text(), "late\n");
    }
}
