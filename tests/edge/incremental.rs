//! incremental (in progress).
