//! sets (in progress).
