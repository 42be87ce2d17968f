//! Hub calls that run on their own task while the engine does local work.

/// A hub call running on its own task while the engine does local work, so
/// that our CPU, the local database and the hub work at the same time.
/// Dropped unfinished (the sync was cancelled or failed), the call is
/// aborted, as the future itself would have been.
pub(super) struct Prefetch<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> Prefetch<T> {
    pub(super) fn spawn(call: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Prefetch(Some(tokio::spawn(call)))
    }

    /// The call's result; its panic, if it panicked.
    pub(super) async fn get(mut self) -> T {
        let handle = self.0.take().expect("a prefetch is awaited once");
        match handle.await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
