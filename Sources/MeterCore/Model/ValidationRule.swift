/// A validation rule a reading can break (SPEC.md section 11); flags are kept, never dropped.
package enum ValidationRule: String, Sendable, CaseIterable, Codable {
    /// Consumption above `spike_factor` times the meter's trailing median.
    case spike
    /// No consumption for `zero_days` while the meter keeps reporting.
    case zeroRun = "zero_run"
    /// The register went down without a plausible rollover: a reset or a meter exchange.
    case registerReset = "register_reset"
    /// A `ts` before the meter's previous reading's.
    case clockBackwards = "clock_backwards"
    /// A voltage outside `voltage_min`–`voltage_max`.
    case voltage
}
