//! blobs (in progress).
