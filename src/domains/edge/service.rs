//! service (in progress).
