/// Encodes the daemon's answers (``KPIDocument``, ``StatusAnswer`` and the others) as the one line
/// of JSON the status socket, HTTP and snapshots send.
///
/// Unlike `JSONEncoder` on Linux, which writes keys in hash order, keys keep the order a type
/// encodes them in (its `CodingKeys` order, for synthesized conformances), so answers read the
/// same every time and in the order of SPEC.md; `nil` optionals are written as `null`, never left
/// out, so every key of an answer is always present. Numbers are written as ``JSONValue`` writes
/// them: integers as integers, whole doubles without `.0`, non-finite doubles as `null`.
/// `JSONDecoder` reads the result back.
///
/// ```swift
/// let line = try AnswerEncoder.json(StatusAnswer(...))  // {"version":"0.1.0","uptime_s":12,…}
/// let answer = try JSONDecoder().decode(StatusAnswer.self, from: Data(line.utf8))
/// ```
package enum AnswerEncoder {
    /// The answer as one line of JSON, no trailing newline.
    package static func json(_ answer: some Encodable) throws -> String {
        try self.value(answer).serialized
    }

    /// The answer as an ordered ``JSONValue``.
    package static func value(_ answer: some Encodable) throws -> JSONValue {
        let node = Node()
        try answer.encode(to: TreeEncoder(node: node, codingPath: []))
        return node.value
    }
}

/// One value being encoded; containers fill it in place, so nested containers can outlive the call
/// that made them.
private final class Node {
    enum Content {
        case empty
        case scalar(JSONValue)
        case object([(String, Node)])
        case array([Node])
    }

    var content = Content.empty

    var value: JSONValue {
        switch self.content {
        case .empty: .null
        case .scalar(let value): value
        case .object(let members): .object(members.map { ($0.0, $0.1.value) })
        case .array(let elements): .array(elements.map(\.value))
        }
    }

    /// The member for `key`, created at the end (or reused: a key encoded twice keeps its first place).
    func member(_ key: String) -> Node {
        if case .object(let members) = self.content, let existing = members.first(where: { $0.0 == key }) {
            return existing.1
        }
        var members: [(String, Node)] = []
        if case .object(let existing) = self.content { members = existing }
        let node = Node()
        members.append((key, node))
        self.content = .object(members)
        return node
    }

    func appendElement() -> Node {
        var elements: [Node] = []
        if case .array(let existing) = self.content { elements = existing }
        let node = Node()
        elements.append(node)
        self.content = .array(elements)
        return node
    }

    func becomeObject() {
        if case .object = self.content { return }
        self.content = .object([])
    }

    func becomeArray() {
        if case .array = self.content { return }
        self.content = .array([])
    }
}

private struct AnswerCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?

    init(stringValue: String) {
        self.stringValue = stringValue
        self.intValue = nil
    }

    init(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
}

private struct TreeEncoder: Encoder {
    let node: Node
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        self.node.becomeObject()
        return KeyedEncodingContainer(KeyedContainer<Key>(node: self.node, codingPath: self.codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        self.node.becomeArray()
        return UnkeyedContainer(node: self.node, codingPath: self.codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleValueContainer(node: self.node, codingPath: self.codingPath)
    }
}

/// Scalars of every `Encodable` primitive, as ``JSONValue`` writes them.
private func scalar(_ value: some Encodable) -> JSONValue? {
    switch value {
    case let value as Bool: .bool(value)
    case let value as String: .string(value)
    case let value as Double: .number(value)
    case let value as Float: .number(Double(value))
    case let value as Int: .int(value)
    case let value as Int8: .int(Int64(value))
    case let value as Int16: .int(Int64(value))
    case let value as Int32: .int(Int64(value))
    case let value as Int64: .int(value)
    case let value as UInt: .int(Int64(clamping: value))
    case let value as UInt8: .int(Int64(value))
    case let value as UInt16: .int(Int64(value))
    case let value as UInt32: .int(Int64(value))
    case let value as UInt64: .int(Int64(clamping: value))
    default: nil
    }
}

private func encode(_ value: some Encodable, into node: Node, codingPath: [any CodingKey]) throws {
    if let scalar = scalar(value) {
        node.content = .scalar(scalar)
    } else {
        try value.encode(to: TreeEncoder(node: node, codingPath: codingPath))
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: Node
    let codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws {
        self.node.member(key.stringValue).content = .scalar(.null)
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try MeterCore.encode(value, into: self.node.member(key.stringValue), codingPath: self.codingPath + [key])
    }

    // Every answer key is always present: `nil` is written as `null`, where `JSONEncoder` would
    // leave the key out.
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws {
        guard let value else { return try self.encodeNil(forKey: key) }
        try self.encode(value, forKey: key)
    }

    mutating func encodeIfPresent(_ value: Bool?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Float?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Int?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Int8?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Int16?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Int32?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: UInt?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: UInt8?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: UInt16?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: UInt32?, forKey key: Key) throws { try self.present(value, key) }
    mutating func encodeIfPresent(_ value: UInt64?, forKey key: Key) throws { try self.present(value, key) }

    private mutating func present<T: Encodable>(_ value: T?, _ key: Key) throws {
        guard let value else { return try self.encodeNil(forKey: key) }
        try self.encode(value, forKey: key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type,
        forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        let child = self.node.member(key.stringValue)
        child.becomeObject()
        return KeyedEncodingContainer(KeyedContainer<NestedKey>(node: child, codingPath: self.codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = self.node.member(key.stringValue)
        child.becomeArray()
        return UnkeyedContainer(node: child, codingPath: self.codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        TreeEncoder(node: self.node.member("super"), codingPath: self.codingPath + [AnswerCodingKey(stringValue: "super")])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        TreeEncoder(node: self.node.member(key.stringValue), codingPath: self.codingPath + [key])
    }
}

private struct UnkeyedContainer: UnkeyedEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]
    private(set) var count = 0

    init(node: Node, codingPath: [any CodingKey]) {
        self.node = node
        self.codingPath = codingPath
    }

    private mutating func next() -> (Node, [any CodingKey]) {
        defer { self.count += 1 }
        return (self.node.appendElement(), self.codingPath + [AnswerCodingKey(intValue: self.count)])
    }

    mutating func encodeNil() throws {
        self.next().0.content = .scalar(.null)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        let (child, path) = self.next()
        try MeterCore.encode(value, into: child, codingPath: path)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let (child, path) = self.next()
        child.becomeObject()
        return KeyedEncodingContainer(KeyedContainer<NestedKey>(node: child, codingPath: path))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let (child, path) = self.next()
        child.becomeArray()
        return UnkeyedContainer(node: child, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let (child, path) = self.next()
        return TreeEncoder(node: child, codingPath: path)
    }
}

private struct SingleValueContainer: SingleValueEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws {
        self.node.content = .scalar(.null)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        try MeterCore.encode(value, into: self.node, codingPath: self.codingPath)
    }
}
