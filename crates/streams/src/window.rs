//! Window definitions: which windows a record at time `t` belongs to.

/// Fixed-size windows every `advance` ms (tumbling when `advance == size`), aligned to the
/// epoch; a record updates its windows until `grace` ms of stream time after they end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeWindows {
    pub size: i64,
    pub advance: i64,
    pub grace: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size` ms, no grace.
    pub fn of(size: i64) -> Self {
        let size = size.max(1);
        Self { size, advance: size, grace: 0 }
    }

    /// Hopping windows: a new one every `advance` ms (at most `size`).
    pub fn advance_by(self, advance: i64) -> Self {
        Self { advance: advance.clamp(1, self.size), ..self }
    }

    pub fn grace(self, grace: i64) -> Self {
        Self { grace: grace.max(0), ..self }
    }

    /// The `[start, end)` windows holding time `t`, earliest first (none start before 0).
    pub fn windows_for(&self, t: i64) -> Vec<(i64, i64)> {
        let first = (t - self.size + self.advance).max(0);
        let mut start = first - first.rem_euclid(self.advance);
        let mut out = Vec::new();
        while start <= t {
            if start + self.size > t {
                out.push((start, start + self.size));
            }
            start += self.advance;
        }
        out
    }
}

/// Sliding windows: fixed windows `[start, start + difference]` (both ends included) for
/// every distinct set of a key's records at most `difference` apart, with a grace period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindows {
    pub difference: i64,
    pub grace: i64,
}

impl SlidingWindows {
    pub fn with_time_difference(difference: i64) -> Self {
        Self { difference: difference.max(1), grace: 0 }
    }
    pub fn grace(self, grace: i64) -> Self {
        Self { grace: grace.max(0), ..self }
    }
}

/// Sessions: a key's records less than `gap` ms apart form one window `[first, last]`; a
/// record between two sessions merges them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionWindows {
    pub gap: i64,
    pub grace: i64,
}

impl SessionWindows {
    pub fn with_inactivity_gap(gap: i64) -> Self {
        Self { gap: gap.max(1), grace: 0 }
    }
    pub fn grace(self, grace: i64) -> Self {
        Self { grace: grace.max(0), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_hopping_windows_of_a_time() {
        assert_eq!(TimeWindows::of(60_000).windows_for(61_000), vec![(60_000, 120_000)]);
        assert_eq!(TimeWindows::of(10).windows_for(0), vec![(0, 10)]);
        assert_eq!(TimeWindows::of(10).windows_for(9), vec![(0, 10)]);
        let hop = TimeWindows::of(10).advance_by(5);
        assert_eq!(hop.windows_for(12), vec![(5, 15), (10, 20)]);
        assert_eq!(hop.windows_for(3), vec![(0, 10)], "no window starts before 0");
        assert_eq!(hop.windows_for(10), vec![(5, 15), (10, 20)]);
    }
}
