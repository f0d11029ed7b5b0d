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
 * entries; it is what a checkpoint or savepoint keeps, and where a restored reader asks the
 * ingress to resume. Where the ingress listens is not part of it: a job restored from a
 * savepoint, or by a run started again after a crash, reads from the ingress of the process
 * that submitted it.
 */
public final class IngressSplit implements SourceSplit {
    final int stream;
    final long offset;

    public IngressSplit(int stream, long offset) {
        this.stream = stream;
        this.offset = offset;
    }

    IngressSplit at(long newOffset) {
        return new IngressSplit(stream, newOffset);
    }

    @Override
    public String splitId() {
        return "stream-" + stream;
    }

    @Override
    public String toString() {
        return splitId() + "+" + offset;
    }

    /** Splits in checkpoints and savepoints: stream, offset. */
    public static final class Serializer implements SimpleVersionedSerializer<IngressSplit> {
        static final int VERSION = 2;

        @Override
        public int getVersion() {
            return VERSION;
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
            if (version != VERSION) {
                throw new IOException("unknown ingress split version " + version);
            }
            return read(new DataInputStream(new ByteArrayInputStream(data)));
        }

        static void write(DataOutputStream out, IngressSplit split) throws IOException {
            out.writeInt(split.stream);
            out.writeLong(split.offset);
        }

        static IngressSplit read(DataInputStream in) throws IOException {
            return new IngressSplit(in.readInt(), in.readLong());
        }
    }
}
