import NIOCore

/// Sizes each read of a meter connection, and keeps NIO from holding on to large receive buffers.
///
/// NIO keeps a pool of receive buffers per channel (`NIOPooledRecvBufferAllocator`) and, given a
/// size hint, grows the buffer it keeps to that size in place: with NIO's adaptive allocator every
/// connection that once read a full buffer keeps one of the largest size for as long as it is
/// open, 20 MB at 10,000 connections for 2 KB, resident while most of them wait for room in the
/// queue. This allocator gives no hint, so NIO keeps only the first, small buffer; a larger one is
/// allocated for a read that needs it and freed as soon as ``IngestHandler`` has parsed or copied
/// its bytes. A connection reads once per readiness (`maxMessagesPerRead` 1): with more, NIO would
/// keep one buffer per read of a readiness.
///
/// README's "Memory bound" has the figures before and after (raw100's peak RSS 149–166 MB down to
/// 111–112 MB at 10,000 connections, CPU per reading unchanged within the runs' noise).
package struct IngestReceiveBuffers: RecvByteBufferAllocator {
    /// The buffer NIO keeps: one reading of ~110 bytes fits, so a meter that reports now and then
    /// never needs another.
    static let smallSize = 256
    /// A read after one that filled its buffer: all the kernel can hold for the connection
    /// (`SO_RCVBUF` 2 KB, which Linux doubles), so one read empties it.
    static let largeSize = 4096

    private var nextSize = Self.smallSize

    package init() {}

    package func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: self.nextSize)
    }

    /// No hint: with one, the pool would grow the buffer it keeps instead of allocating a new one.
    package func nextBufferSize() -> Int? { nil }

    /// Returns whether the next read needs a buffer larger than the small one the pool keeps.
    package mutating func record(actualReadBytes: Int) -> Bool {
        if actualReadBytes >= self.nextSize {
            self.nextSize = Self.largeSize
        } else if actualReadBytes < Self.smallSize {
            self.nextSize = Self.smallSize
        }
        return self.nextSize > Self.smallSize
    }
}
