//! Redirecting file system: a FUSE `FileSystem` over a guest tree of sparse stubs whose data
//! lives in a host block store (docs/architecture.md#the-redirect-contract).
//!
//! Every binary describes a share the same way:
//!
//! ```
//! use fsredirect::ShareSpec;
//!
//! let share = ShareSpec::parse("tag=data,dir=/srv/guest,store=/srv/store").unwrap();
//! assert_eq!(share.tag, "data");
//! // The volume defaults to the tag: data lives in /srv/store/data/<path>.
//! assert_eq!(share.volume_dir().unwrap(), std::path::Path::new("/srv/store/data"));
//! ```
//!
//! A device (virtio-fs, vhost-user) or a host mount serves the share with a [`RedirectFs`],
//! which is a fuse-backend-rs `FileSystem`:
//!
//! ```
//! use std::sync::Arc;
//! use fuse_backend_rs::api::server::Server;
//! use fsredirect::{FsConfig, RedirectFs, ShareSpec};
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! # std::fs::create_dir(tmp.path().join("guest")).unwrap();
//! # let spec = format!("tag=data,dir={0}/guest,store={0}/store", tmp.path().display());
//! let share = ShareSpec::parse(&spec).unwrap();
//! // Opens (or creates) <store>/data and takes the volume lock until `fs` is dropped.
//! let fs = RedirectFs::new(&share, FsConfig::default()).unwrap();
//! assert!(fs.is_redirecting());
//! // Hand each request (a Reader and a Writer over the queue's buffers) to the server.
//! let server = Server::new(Arc::new(fs));
//! # drop(server);
//! ```
//!
//! Modules, each with one job:
//! - [`share`] parses share descriptions; [`policy`] decides which files are redirected;
//! - [`fs`] is the file system; [`names`] validates guest names and tracks each inode's path;
//!   [`fdcache`] bounds open store descriptors; [`fdbudget`] bounds the descriptors the guest
//!   makes the server hold;
//! - [`store`] owns a volume of the store; [`meta`] encodes, reads and writes the stub
//!   metadata; [`beneath`] resolves host paths without escaping or following symlinks;
//! - [`relocate`] moves a file between guest tree and store (the server and the tools);
//!   [`placement`] lists the files the policy would place elsewhere;
//! - [`intent`] logs operations with two halves; [`recover`] settles them and reconciles
//!   stubs with their objects after an unclean stop; [`verify`] checks stubs against the store;
//! - [`treelock`] keeps one server per guest tree; [`mount`] serves a share through /dev/fuse;
//!   [`tools`] are the host tools (inspect, verify, repair, gc, hydrate, dehydrate) behind the
//!   `fsredirect` binary;
//! - [`faults`] lets tests fail store operations or cut power under them; with the
//!   `test-utils` feature, `memio` (in-memory request buffers) and `testshare` (the share
//!   fixture) serve tests too.

#![deny(missing_docs)]

pub mod beneath;
pub mod faults;
pub mod fdbudget;
pub mod fdcache;
pub mod fs;
pub mod intent;
#[cfg(any(test, feature = "test-utils"))]
pub mod memio;
pub mod meta;
pub mod mount;
pub mod names;
pub mod placement;
pub mod policy;
pub mod recover;
pub mod relocate;
pub mod share;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod testshare;
pub mod tools;
pub mod treelock;
pub mod verify;

pub use fs::{FsConfig, FsError, RedirectFs};
pub use policy::{Policy, PolicyError};
pub use share::{ShareSpec, ShareSpecError, StoreSpec};
pub use store::{Store, StoreError};
