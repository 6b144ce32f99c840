import Foundation

/// The rules that turn what meters send into consumption and validation flags (SPEC.md section 11),
/// defined once for the writer, the parser and the tests.
///
/// - **Register readings**: a reading may carry the meter's cumulative register (`register_kwh`)
///   instead of `kwh`. Its consumption is the difference to the meter's previous register (by
///   `seq`); the first register sets the baseline and contributes nothing. A register that goes
///   down either wrapped at its digit capacity (``registerCapacity``, `10^register_digits`), when
///   the wrapped difference is at most ``maximumKwh``, or was reset (a meter exchange): a new
///   baseline, no consumption, and a `register_reset` flag. So is a register that rises by more
///   than ``largestAdvance(elapsedMs:)`` since the previous one.
/// - **Gap estimation**: the consumption of a register reading further than
///   ``expectedIntervalMs`` from the previous one is spread over the gap in proportion to time,
///   so each calendar month gets its share; months that got a share of a gap spanning more than one
///   month are `estimated`.
/// - **Flags**: `register_reset`, `clock_backwards` (a `ts` before the previous reading's),
///   `voltage` (outside ``voltageMinimum``–``voltageMaximum``), `spike` (``isSpike(_:trailing:)``)
///   and `zero_run` (``ZeroRun``) are kept as rows, never dropped.
package struct MeteringRules: Sendable, Equatable {
    /// Whole digits of a meter's register; it wraps to 0 after `10^registerDigits` kWh.
    package var registerDigits = 6
    /// Largest consumption one reading may carry; also bounds a rollover's wrapped difference.
    package var maximumKwh = 1_000.0
    /// Readings further apart than this are a gap whose consumption is spread over time.
    package var expectedIntervalMs: Int64 = 900_000
    /// ``expectedIntervalMs`` when the operator set it (`expected_interval`), `nil` when left at its
    /// default: interval completeness (``ReadSuccess``) then observes each meter's own interval.
    package var configuredIntervalMs: Int64?
    /// Voltages a healthy supply stays within (230 V ± 10 %, EN 50160); outside is a `voltage` flag.
    package var voltageMinimum = 207.0
    /// The top of the healthy range (see ``voltageMinimum``).
    package var voltageMaximum = 253.0
    /// A reading's consumption above this many times the meter's trailing median is a spike.
    package var spikeFactor = 10.0
    /// Days of zero consumption while reporting that make a zero run.
    package var zeroDays = 3

    /// The defaults: 6-digit registers, `max_kwh` 1000, 15-minute readings, 207–253 V, spikes at
    /// 10 times the median, zero runs of 3 days.
    package init() {}

    /// The register's capacity: it counts from 0 up to just below this, then wraps.
    package var registerCapacity: Double { pow(10, Double(self.registerDigits)) }

    /// Whether a voltage is outside the healthy range.
    package func isVoltageOutOfRange(_ volts: Double) -> Bool {
        volts < self.voltageMinimum || volts > self.voltageMaximum
    }

    /// What a register reading means after the meter's previous register.
    package enum RegisterStep: Equatable, Sendable {
        /// The meter's first register (or the first after a `kwh` reading): no consumption.
        case baseline
        /// The register went up (or stayed): the difference.
        case advance(kwh: Double)
        /// The register went down by wrapping at its capacity: the wrapped difference.
        case rollover(kwh: Double)
        /// The register went down and did not wrap (a reset or a meter exchange): a new baseline.
        case reset(wrappedKwh: Double)
        /// The register went up by more than any meter consumes in the time since the previous
        /// one (a meter exchanged for one with a higher register, a corrupted value): a new baseline.
        case jump(kwh: Double)

        /// The consumption the reading contributes.
        package var kwh: Double {
            switch self {
            case .baseline, .reset, .jump: 0
            case .advance(let kwh), .rollover(let kwh): kwh
            }
        }
    }

    /// Consumption values of a meter's recent regular readings the spike rule compares against.
    package static let spikeWindow = 16

    /// The most a reading's latency counts for in latency sums, maxima and histograms (365 days):
    /// a reading from a meter whose clock was reset decades back still counts as very late, and
    /// no sum of latencies can overflow before its meter-month holds hundreds of millions of readings.
    package static let maximumLatencyMs: Int64 = 365 * 86_400_000
    /// Fewer values than this make no median worth judging by.
    package static let spikeMinimumWindow = 5

    /// Whether a reading's consumption is a spike: above ``spikeFactor`` times the (upper) median
    /// of the meter's trailing consumption, once there are enough values and their median is above 0.
    package func isSpike(_ kwh: Double, trailing: [Float]) -> Bool {
        guard trailing.count >= Self.spikeMinimumWindow, kwh > 0 else { return false }
        // The median is at least the smallest value: most readings are settled here, without sorting
        // (which allocates) on the writer's path.
        guard let smallest = trailing.min(), kwh > self.spikeFactor * Double(smallest) else { return false }
        let median = Double(trailing.sorted()[trailing.count / 2])
        return median > 0 && kwh > self.spikeFactor * median
    }

    /// A meter's current run of readings without consumption.
    package struct ZeroRun: Sendable, Equatable {
        /// Start of the run: the `ts` of the reading before its first zero (or of that zero when it was the first).
        package var sinceMs: Int64?
        /// Whether the run already raised its `zero_run` flag (one per run).
        package var flagged = false

        package init(sinceMs: Int64? = nil, flagged: Bool = false) {
            self.sinceMs = sinceMs
            self.flagged = flagged
        }
    }

    /// Advances a meter's zero run by one reading; true when the run reaches ``zeroDays`` with
    /// this reading (the moment to raise `zero_run`).
    ///
    /// - Parameters:
    ///   - consumption: the reading's consumption, `nil` when it says nothing (a register baseline or reset).
    ///   - previousMs: the `ts` of the meter's previous reading.
    package func advance(_ run: inout ZeroRun, consumption: Double?, previousMs: Int64?, timestampMs: Int64) -> Bool {
        guard let consumption else { return false }
        guard consumption == 0 else {
            run = ZeroRun()
            return false
        }
        let since = run.sinceMs ?? previousMs ?? timestampMs
        run.sinceMs = since
        guard !run.flagged, timestampMs - since >= Int64(self.zeroDays) * 86_400_000 else { return false }
        run.flagged = true
        return true
    }

    /// The most a register may rise in `elapsedMs`: ``maximumKwh`` (the most one reading may carry)
    /// for each ``expectedIntervalMs`` that passed, and at least once, so a gap's consumption
    /// still counts in full.
    package func largestAdvance(elapsedMs: Int64) -> Double {
        self.maximumKwh * max(1, Double(elapsedMs) / Double(self.expectedIntervalMs))
    }

    /// Classifies a register against the meter's previous one (`nil`: no baseline yet).
    ///
    /// - Parameter elapsedMs: the time since the previous register reading. A rise above
    ///   ``largestAdvance(elapsedMs:)`` is a ``RegisterStep/jump(kwh:)``, not consumption: one bad
    ///   register value must not put a million kWh on a bill.
    package func step(from previous: Double?, to register: Double, elapsedMs: Int64 = 0) -> RegisterStep {
        guard let previous else { return .baseline }
        if register >= previous {
            let kwh = register - previous
            return kwh <= self.largestAdvance(elapsedMs: elapsedMs) ? .advance(kwh: kwh) : .jump(kwh: kwh)
        }
        let wrapped = self.registerCapacity - previous + register
        return wrapped <= self.maximumKwh ? .rollover(kwh: wrapped) : .reset(wrappedKwh: wrapped)
    }
}
