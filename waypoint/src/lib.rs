//! Waypoint
