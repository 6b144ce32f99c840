// libFuzzer driver for the ingest decoder: the package's `ReadingParserFuzzer` target, which exists only
// when METERD_FUZZ is set (scripts/fuzz.sh builds it with -sanitize=fuzzer,address). Any crash,
// overflow trap or sanitizer report is a bug: the parser must answer every byte string with a reading
// or a rejection.
#if canImport(Glibc)
import Glibc
#endif
import MeterCore

/// libFuzzer's entry point for a program with its own `main` (SwiftPM gives every executable one).
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzer(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@main
enum ReadingParserFuzzer {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(
            runFuzzer(&argc, &argv) { data, size in
                ReadingParserFuzzer.testOneInput(UnsafeRawBufferPointer(start: data, count: size))
                return 0
            })
    }

    static func testOneInput(_ bytes: UnsafeRawBufferPointer) {
        let parser = ReadingParser(maximumKwh: 1_000)
        do throws(Rejection) {
            let reading = try parser.parse(bytes)
            // What was accepted must satisfy the protocol's invariants and survive a round trip.
            precondition(reading.seq >= 0 && reading.kwh >= 0 && reading.kwh <= 1_000 && reading.kwh.isFinite)
            precondition(!reading.meter.isEmpty && reading.meter.utf8.count <= 64)
            let again = try parser.parse(String(reading.line.dropLast()))
            precondition(again.meter == reading.meter && again.seq == reading.seq && again.timestampMs == reading.timestampMs)
            precondition(again.kwh == reading.kwh, "kwh \(reading.kwh) did not round-trip")
        } catch {
            precondition(!error.detail.isEmpty)
        }
    }
}
