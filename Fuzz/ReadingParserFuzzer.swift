// libFuzzer entry point for the ingest decoder: compiled together with the parser's sources by
// scripts/fuzz.sh (swiftc -sanitize=fuzzer,address). Any crash, overflow trap or sanitizer report
// is a bug: the parser must answer every byte string with a reading or a rejection.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
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
    return 0
}
