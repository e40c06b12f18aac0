//! Redirecting file system: a FUSE `FileSystem` over a guest tree of sparse stubs whose data
//! lives in a host block store (DESIGN.md section 4).
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

pub mod beneath;
pub mod fdcache;
pub mod fs;
pub mod meta;
pub mod mount;
pub mod names;
pub mod share;
pub mod store;
pub mod verify;

pub use fs::{FsConfig, FsError, RedirectFs};
pub use share::{ShareSpec, ShareSpecError, StoreSpec};
pub use store::{Store, StoreError};
