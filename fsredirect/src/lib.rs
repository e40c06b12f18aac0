//! Redirecting file system.
