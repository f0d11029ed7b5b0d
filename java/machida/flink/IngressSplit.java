package machida.flink;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * One recorded input stream of the ingress (one per pipeline source) and how far the job has
 * read it. The offset is a byte position in the stream's log that always falls between two
 * entries; it is what a checkpoint keeps, and where a restored reader asks the ingress to
 * resume.
 */
public final class IngressSplit implements SourceSplit {
    final int stream;
    final String host;
    final int port;
    final long offset;

    public IngressSplit(int stream, String host, int port, long offset) {
        this.stream = stream;
        this.host = host;
        this.port = port;
        this.offset = offset;
    }

    IngressSplit at(long newOffset) {
        return new IngressSplit(stream, host, port, newOffset);
    }

    @Override
    public String splitId() {
        return "stream-" + stream;
    }

    @Override
    public String toString() {
        return splitId() + "@" + host + ":" + port + "+" + offset;
    }

    /** Splits in checkpoints: stream, host, port, offset. */
    public static final class Serializer implements SimpleVersionedSerializer<IngressSplit> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(IngressSplit split) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(bytes);
            write(out, split);
            out.flush();
            return bytes.toByteArray();
        }

        @Override
        public IngressSplit deserialize(int version, byte[] data) throws IOException {
            if (version != 1) {
                throw new IOException("unknown ingress split version " + version);
            }
            return read(new DataInputStream(new ByteArrayInputStream(data)));
        }

        static void write(DataOutputStream out, IngressSplit split) throws IOException {
            out.writeInt(split.stream);
            out.writeUTF(split.host);
            out.writeInt(split.port);
            out.writeLong(split.offset);
        }

        static IngressSplit read(DataInputStream in) throws IOException {
            return new IngressSplit(in.readInt(), in.readUTF(), in.readInt(), in.readLong());
        }
    }
}
