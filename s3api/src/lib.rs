//! The S3 HTTP front end of Zonestore. Not written yet: see README.md for what works today.
