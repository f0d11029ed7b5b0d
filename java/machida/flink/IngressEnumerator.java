package machida.flink;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * Hands each stream to one reader: stream i goes to subtask i mod parallelism, so a stream is
 * always read in order by a single reader. Streams come back here when their reader fails and
 * are handed out again, from their checkpointed offsets, when that reader registers anew.
 */
final class IngressEnumerator implements SplitEnumerator<IngressSplit, List<IngressSplit>> {
    private final SplitEnumeratorContext<IngressSplit> context;
    private final List<IngressSplit> pending;

    IngressEnumerator(SplitEnumeratorContext<IngressSplit> context, List<IngressSplit> pending) {
        this.context = context;
        this.pending = new ArrayList<>(pending);
    }

    @Override
    public void start() {}

    @Override
    public void handleSplitRequest(int subtask, String host) {}

    @Override
    public void addSplitsBack(List<IngressSplit> splits, int subtask) {
        pending.addAll(splits);
    }

    @Override
    public void addReader(int subtask) {
        int parallelism = context.currentParallelism();
        Iterator<IngressSplit> it = pending.iterator();
        while (it.hasNext()) {
            IngressSplit split = it.next();
            if (split.stream % parallelism == subtask) {
                context.assignSplit(split, subtask);
                it.remove();
            }
        }
        context.signalNoMoreSplits(subtask);
    }

    @Override
    public List<IngressSplit> snapshotState(long checkpointId) {
        return new ArrayList<>(pending);
    }

    @Override
    public void close() {}

    /** The enumerator's checkpoint: the splits not handed out. */
    static final class StateSerializer implements SimpleVersionedSerializer<List<IngressSplit>> {
        @Override
        public int getVersion() {
            return IngressSplit.Serializer.VERSION;
        }

        @Override
        public byte[] serialize(List<IngressSplit> splits) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(bytes);
            out.writeInt(splits.size());
            for (IngressSplit split : splits) {
                IngressSplit.Serializer.write(out, split);
            }
            out.flush();
            return bytes.toByteArray();
        }

        @Override
        public List<IngressSplit> deserialize(int version, byte[] data) throws IOException {
            if (version != getVersion()) {
                throw new IOException("unknown ingress enumerator version " + version);
            }
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(data));
            int count = in.readInt();
            List<IngressSplit> splits = new ArrayList<>(count);
            for (int i = 0; i < count; i++) {
                splits.add(IngressSplit.Serializer.read(in));
            }
            return splits;
        }
    }
}
