/// Faults the simulated fleet injects on demand (`meter-sim run --faults SPEC`).
///
/// SPEC is a comma-separated list of `name=rate` entries, some with `:seconds`:
/// `silent=0.01:120,malformed=0.001,skew=0.01,duplicate=0.01,disconnect=0.001,bytewise=0.01,overlong=0.0005,spoof=0.01`.
/// Every rate is a probability in 0...1. ``help`` says what each fault does.
package struct FaultPlan: Sendable, Equatable {
    /// Per reading due: the meter instead falls silent (sends nothing, measures nothing) for `silentSeconds`.
    package var silentRate = 0.0
    package var silentSeconds = 120.0
    /// Per reading sent: a malformed line goes out first (invalid JSON, a missing or an invalid field, at random).
    package var malformedRate = 0.0
    /// Per reading: its `ts` is `skewSeconds` ahead of the real clock; meterd rejects it (`clock_skew`) and the meter drops it.
    package var skewRate = 0.0
    package var skewSeconds = 3600.0
    /// Per reading acknowledged: the meter sends it once more with the same seq.
    package var duplicateRate = 0.0
    /// Per reading sent for the first time: the meter writes half of the line and resets the connection, then reconnects and resends.
    package var disconnectRate = 0.0
    /// Share of connections that write every byte as a separate write.
    package var bytewiseRate = 0.0
    /// Per reading sent: an over-long line (longer than meterd's 4096-byte limit) goes out first.
    package var overlongRate = 0.0
    /// Per reading sent: a reading for a meter this connection does not own goes out first (``spoofedMeter``).
    package var spoofRate = 0.0
    /// Share of meters whose register starts just below its capacity, so it wraps to 0 early (`--register`).
    package var rolloverRate = 0.0
    /// Per reading: the meter was exchanged, its register starts again from 0 (`--register`).
    package var resetRate = 0.0
    /// Per reading: its consumption is ``spikeMultiplier`` times what the meter used.
    package var spikeRate = 0.0
    package static let spikeMultiplier = 50.0
    /// Per reading: its `ts` is `backwardsSeconds` before the previous reading's (the clock went backwards).
    package var backwardsRate = 0.0
    package var backwardsSeconds = 600.0
    /// Per reading due: the meter sends nothing for `gapSeconds` of its own clock, then one reading
    /// covering the whole gap (a long gap; with `--time-scale` it can span months).
    package var gapRate = 0.0
    package var gapSeconds = 86_400.0

    package init() {}

    package static let help = """
        Faults (--faults): a comma-separated list of NAME=RATE entries, RATE a probability 0-1, e.g. \
        silent=0.01:120,malformed=0.001,skew=0.01,duplicate=0.01,disconnect=0.001,bytewise=0.01,overlong=0.0005

        silent=RATE[:SECONDS] - per reading due, the meter falls silent for SECONDS (default 120): it \
        neither measures nor sends, so meterd sees it go quiet (and flags it inactive once the silence \
        exceeds its inactive_after); then it resumes with its next seq, the gap's energy in that reading.

        malformed=RATE - per reading, a malformed line goes out before it (invalid JSON, a missing \
        field or an invalid field, at random): meterd answers the error and quarantines the line.

        skew=RATE[:SECONDS] - per reading, its ts is SECONDS (default 3600) ahead of the real clock: \
        meterd rejects it with clock_skew and the meter drops it (it is never acknowledged).

        duplicate=RATE - per acknowledged reading, the meter sends it again with the same seq: meterd \
        acks it and counts a duplicate without storing it twice.

        disconnect=RATE - per reading sent for the first time, the meter writes half the line and \
        resets the connection (RST), then reconnects and resends everything unacknowledged.

        bytewise=RATE - the share of connections that write one byte at a time.

        overlong=RATE - per reading, a line longer than 4096 bytes goes out before it: line_too_long.

        spoof=RATE - per reading, a reading for a meter the connection does not own goes out before \
        it: the meter right after the fleet (MTR-000101 for --meters 100), which no certificate of \
        the run names. Under meter_auth = certificate meterd answers forbidden and stores nothing; \
        under meter_auth = none it is stored (and acked) like any reading.

        rollover=SHARE - with --register, the share of meters whose register starts just below its \
        capacity (10^--register-digits kWh), so it wraps to 0 during the run: meterd counts the \
        wrapped difference.

        reset=RATE - with --register, per reading, the meter is exchanged: its register starts again \
        from 0, meterd raises register_reset and takes the new register as the baseline.

        spike=RATE - per reading, the consumption is 50 times what the meter used (a spike).

        backwards=RATE[:SECONDS] - per reading, its ts is SECONDS (default 600) before the previous \
        reading's: meterd raises clock_backwards.

        gap=RATE[:SECONDS] - per reading due, the meter sends nothing for SECONDS (default 86400) of \
        its own clock (so --time-scale shortens the wait), then one reading covering the whole gap; \
        with --register meterd spreads its consumption over the months the gap spans.
        """

    /// Parses SPEC; an empty string means no faults.
    package init(parsing spec: String) throws(FaultSpecError) {
        self.init()
        for entry in spec.split(separator: ",", omittingEmptySubsequences: true) {
            let entry = entry.trimmingWhitespace()
            guard let equals = entry.firstIndex(of: "=") else { throw FaultSpecError(entry: String(entry), reason: "expected NAME=RATE") }
            let name = String(entry[..<equals])
            let value = entry[entry.index(after: equals)...]
            let parts = value.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2, let rate = Double(parts[0]), rate >= 0, rate <= 1 else {
                throw FaultSpecError(entry: String(entry), reason: "RATE must be a probability between 0 and 1")
            }
            var seconds: Double?
            if parts.count == 2 {
                guard let value = Double(parts[1]), value > 0, value.isFinite else {
                    throw FaultSpecError(entry: String(entry), reason: "SECONDS must be a positive number")
                }
                seconds = value
            }
            switch name {
            case "silent":
                self.silentRate = rate
                if let seconds { self.silentSeconds = seconds }
            case "skew":
                self.skewRate = rate
                if let seconds { self.skewSeconds = seconds }
            case "backwards":
                self.backwardsRate = rate
                if let seconds { self.backwardsSeconds = seconds }
            case "gap":
                self.gapRate = rate
                if let seconds { self.gapSeconds = seconds }
            case "malformed", "duplicate", "disconnect", "bytewise", "overlong", "spoof", "rollover", "reset", "spike":
                guard seconds == nil else { throw FaultSpecError(entry: String(entry), reason: "\(name) takes no :SECONDS") }
                switch name {
                case "malformed": self.malformedRate = rate
                case "duplicate": self.duplicateRate = rate
                case "disconnect": self.disconnectRate = rate
                case "bytewise": self.bytewiseRate = rate
                case "spoof": self.spoofRate = rate
                case "rollover": self.rolloverRate = rate
                case "reset": self.resetRate = rate
                case "spike": self.spikeRate = rate
                default: self.overlongRate = rate
                }
            default:
                throw FaultSpecError(
                    entry: String(entry),
                    reason:
                        "unknown fault \"\(name)\"; known: silent, malformed, skew, duplicate, disconnect, bytewise, overlong, spoof, rollover, reset, spike, backwards, gap"
                )
            }
        }
    }
}

/// A `--faults` entry that could not be understood.
package struct FaultSpecError: Error, CustomStringConvertible {
    package var entry: String
    package var reason: String

    package var description: String { "Invalid --faults entry \"\(self.entry)\": \(self.reason)." }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> Substring {
        var text = self
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return text
    }
}
