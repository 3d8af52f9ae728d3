//! couchdb (in progress).
