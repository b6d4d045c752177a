//! The forwarder's own runtime (one worker thread, `spool-forward`, and its blocking threads),
//! at a lower CPU priority (`--forward-nice`). In spooled mode the sink is connected on it, so
//! the broker client's I/O and every publish of the forwarder run there: on cores shared with
//! the broker or other pods, the scheduler runs the callbacks' answers first and the
//! forwarder in the time left. Measured in docs/benchmarks.md ("Third pass").

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};

pub struct ForwardRuntime {
    runtime: Option<Runtime>,
}

impl ForwardRuntime {
    pub fn new(nice: i32) -> std::io::Result<ForwardRuntime> {
        let runtime = Builder::new_multi_thread()
            // Multi-thread with one worker: the forwarder's disk reads use block_in_place.
            .worker_threads(1)
            .thread_name("spool-forward")
            .on_thread_start(move || renice_this_thread(nice))
            .enable_all()
            .build()?;
        Ok(ForwardRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken on drop")
            .handle()
    }

    /// Runs `future` on this runtime and waits for it from the caller's runtime.
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle().spawn(future).await {
            Ok(output) => output,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

impl Drop for ForwardRuntime {
    /// Dropped from async code (the bridge's shutdown): a runtime may not block there.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// On Linux the nice value is per thread: `setpriority(PRIO_PROCESS, 0, ..)` sets the calling
/// thread's. Raising it needs no privilege; a failure only costs the priority (logged).
#[allow(unsafe_code)] // the crate's one production use of `unsafe`
fn renice_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: a plain system call on the calling thread, no memory passed.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), nice, "spool: cannot lower the forwarder's priority");
    }
}
