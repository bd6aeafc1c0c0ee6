//! Helpers tollgate's test suites share. A dev-dependency only: nothing here ships.
