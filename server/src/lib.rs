//! The Zonestore engine. Not written yet: see README.md for what works today.
