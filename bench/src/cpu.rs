//! The daemon's own CPU time, read from `/proc/PID/stat` (user + system, all its threads:
//! the gRPC workers, librdkafka's and the AMQP client's), so that a run's cost per message
//! is a figure that holds from machine to machine, unlike msg/s on a shared one.

use std::time::Duration;

use crate::BenchError;

/// A process whose CPU time is read before and after each run.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    /// Its pid.
    pid: u32,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks_per_second: u64,
}

impl CpuClock {
    /// The clock of process `pid`, checked once by reading it.
    pub fn of(pid: u32) -> Result<Self, BenchError> {
        let clock = Self {
            pid,
            ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
        };
        clock.now()?;
        Ok(clock)
    }

    /// The process's CPU time so far.
    pub fn now(&self) -> Result<Duration, BenchError> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Usage(format!("cannot read {path}: {e}")))?;
        let ticks = parse_cpu_ticks(&stat)
            .ok_or_else(|| BenchError::Usage(format!("unexpected {path}: {stat}")))?;
        Ok(Duration::from_micros(
            ticks.saturating_mul(1_000_000) / self.ticks_per_second,
        ))
    }
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`. The command name (the
/// second field) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (field 3) … utime is field 14 and stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time per message in µs.
pub fn per_message_us(cpu: Duration, messages: u64) -> Option<f64> {
    (messages > 0).then(|| cpu.as_secs_f64() * 1e6 / messages as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        let stat = "4242 (ferry serve (x)) S 1 4242 4242 0 -1 4194560 2816 0 0 0 \
                    150 37 0 0 20 0 9 0 12345 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(187));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_clock() {
        let clock = CpuClock::of(std::process::id()).unwrap();
        let before = clock.now().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(clock.now().unwrap() >= before);
    }
}
