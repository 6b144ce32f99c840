import NIOCore
import PostgresNIO

/// A one-dimensional array bound as a query parameter, written straight into PostgreSQL's binary
/// array format (`array_recv`): the header, then each element's length and bytes, in one pass
/// over one buffer.
///
/// PostgresNIO's own `[Int64]` encoding goes through its generic per-element path (a length
/// placeholder written, the element encoded, the length patched, each with its own capacity
/// check); a commit binds about 60 arrays of up to several thousand elements, so the writer
/// thread spent a noticeable share of each commit there. No element is NULL: nullable columns
/// travel with sentinels (``PostgreSQLCommitStatement/nullInteger``, NaN, the empty string).
///
/// ```swift
/// let query: PostgresQuery = "SELECT cardinality(\(PostgreSQLArray(ids)))"
/// ```
struct PostgreSQLArray<Element: PostgreSQLArrayElement>: PostgresNonThrowingEncodable {
    var elements: [Element]

    init(_ elements: [Element]) {
        self.elements = elements
    }

    static var psqlType: PostgresDataType { Element.arrayType }
    static var psqlFormat: PostgresFormat { .binary }

    func encode<JSONEncoder: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        // Dimensions (0 for an empty array), the has-NULLs flag, the element type; then the one
        // dimension's length and lower bound.
        buffer.writeMultipleIntegers(UInt32(self.elements.isEmpty ? 0 : 1), UInt32(0), Element.elementType.rawValue)
        guard !self.elements.isEmpty else { return }
        buffer.writeMultipleIntegers(Int32(self.elements.count), Int32(1))
        Element.writeElements(self.elements, into: &buffer)
    }
}

/// An element type of ``PostgreSQLArray``: its PostgreSQL types and how a run of them is written.
protocol PostgreSQLArrayElement: Sendable {
    static var elementType: PostgresDataType { get }
    static var arrayType: PostgresDataType { get }
    /// Writes each element as its length (a big-endian `int4`) and its binary value.
    static func writeElements(_ elements: [Self], into buffer: inout ByteBuffer)
}

/// Fixed-width elements: every one takes 4 + `width` bytes, so the whole run is reserved once and
/// stored through one pointer.
private func writeFixedWidth<T>(
    _ elements: [T], width: Int, into buffer: inout ByteBuffer, _ store: (T, UnsafeMutableRawBufferPointer, Int) -> Void
) {
    let size = elements.count * (4 + width)
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { bytes in
        var offset = 0
        for element in elements {
            bytes.storeBytes(of: UInt32(width).bigEndian, toByteOffset: offset, as: UInt32.self)
            store(element, bytes, offset + 4)
            offset += 4 + width
        }
        return size
    }
}

extension Int64: PostgreSQLArrayElement {
    static var elementType: PostgresDataType { .int8 }
    static var arrayType: PostgresDataType { .int8Array }

    static func writeElements(_ elements: [Int64], into buffer: inout ByteBuffer) {
        writeFixedWidth(elements, width: 8, into: &buffer) { value, bytes, offset in
            bytes.storeBytes(of: value.bigEndian, toByteOffset: offset, as: Int64.self)
        }
    }
}

extension Double: PostgreSQLArrayElement {
    static var elementType: PostgresDataType { .float8 }
    static var arrayType: PostgresDataType { .float8Array }

    /// IEEE 754 bits, big-endian, as `float8send` writes them (NaN included).
    static func writeElements(_ elements: [Double], into buffer: inout ByteBuffer) {
        writeFixedWidth(elements, width: 8, into: &buffer) { value, bytes, offset in
            bytes.storeBytes(of: value.bitPattern.bigEndian, toByteOffset: offset, as: UInt64.self)
        }
    }
}

extension Bool: PostgreSQLArrayElement {
    static var elementType: PostgresDataType { .bool }
    static var arrayType: PostgresDataType { .boolArray }

    static func writeElements(_ elements: [Bool], into buffer: inout ByteBuffer) {
        writeFixedWidth(elements, width: 1, into: &buffer) { value, bytes, offset in
            bytes.storeBytes(of: value ? 1 : 0, toByteOffset: offset, as: UInt8.self)
        }
    }
}

extension String: PostgreSQLArrayElement {
    static var elementType: PostgresDataType { .text }
    static var arrayType: PostgresDataType { .textArray }

    /// UTF-8 bytes, as `textsend` writes them (the caller keeps NUL out: PostgreSQL's text refuses it).
    static func writeElements(_ elements: [String], into buffer: inout ByteBuffer) {
        for element in elements {
            let lengthIndex = buffer.writerIndex
            buffer.writeInteger(UInt32(0))
            let length = buffer.writeString(element)
            buffer.setInteger(UInt32(length), at: lengthIndex)
        }
    }
}

extension ByteBuffer: PostgreSQLArrayElement {
    static var elementType: PostgresDataType { .bytea }
    static var arrayType: PostgresDataType { .byteaArray }

    static func writeElements(_ elements: [ByteBuffer], into buffer: inout ByteBuffer) {
        for element in elements {
            buffer.writeInteger(UInt32(element.readableBytes))
            buffer.writeImmutableBuffer(element)
        }
    }
}
