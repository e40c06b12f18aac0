//! Moving FUSE requests between a virtqueue and the FUSE server: the part
//! of the device shared by the in-VMM device and the vhost-user back-end.

use std::sync::atomic::Ordering;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory;

use crate::warn_limited;

/// Errors that make a queue unusable until the driver resets the device.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver's rings are inconsistent (e.g. avail.idx ran more than
    /// the queue size ahead) or unreachable.
    #[error("the driver's queue is corrupt: {0}")]
    Corrupt(String),
}

/// Handles one request chain; returns the number of bytes written back.
///
/// Malformed chains (addresses outside guest memory, no writable part,
/// truncated FUSE headers, ...) are answered with an errno by the FUSE
/// server when it can parse enough to reply, and dropped otherwise.
pub fn handle_chain<F, M>(server: &Server<F>, mem: &M, chain: DescriptorChain<&M>) -> u32
where
    F: FileSystem + Sync,
    M: GuestMemory,
{
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(reader) => reader,
        Err(err) => {
            warn_limited!("virtio-fs: dropping a request with unreadable buffers: {err}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(writer) => Writer::VirtioFs(writer),
        Err(err) => {
            warn_limited!("virtio-fs: dropping a request with unwritable buffers: {err}");
            return 0;
        }
    };
    match server.handle_message(reader, writer, None, None) {
        Ok(written) => u32::try_from(written).unwrap_or(u32::MAX),
        Err(err) => {
            warn_limited!("virtio-fs: request failed: {err}");
            0
        }
    }
}

/// Serves every request available on `queue`, with notification
/// suppression; returns whether the driver must be interrupted.
pub fn process_queue<F, M>(
    server: &Server<F>,
    mem: &M,
    queue: &mut Queue,
) -> Result<bool, QueueError>
where
    F: FileSystem + Sync,
    M: GuestMemory,
{
    let corrupt = |e: virtio_queue::Error| QueueError::Corrupt(e.to_string());
    let mut used_any = false;
    loop {
        queue.disable_notification(mem).map_err(corrupt)?;
        check_avail_index(queue, mem)?;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = handle_chain(server, mem, chain);
            queue.add_used(mem, head, written).map_err(corrupt)?;
            used_any = true;
        }
        // Re-enabling reports whether more arrived meanwhile (virtio 1.2 §2.7.10).
        if !queue.enable_notification(mem).map_err(corrupt)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem).map_err(corrupt)?)
}

/// pop_descriptor_chain() treats a bad avail index as "nothing to do";
/// we want to know, so the driver can be told to reset the device.
fn check_avail_index<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<(), QueueError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| QueueError::Corrupt(e.to_string()))?;
    let pending = avail - std::num::Wrapping(queue.next_avail());
    if pending.0 > queue.size() {
        return Err(QueueError::Corrupt(format!(
            "avail.idx {} is {} entries ahead of the device in a queue of {}",
            avail.0,
            pending.0,
            queue.size()
        )));
    }
    Ok(())
}
