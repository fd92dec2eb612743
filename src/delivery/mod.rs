//! delivery (todo)
