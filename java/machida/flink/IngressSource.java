package machida.flink;

import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * A FLIP-27 source over the streams that machida-flink's ingress records: what the senders
 * wrote, framed and kept outside the job, read by offset. It ends when every stream it reads
 * carries its end entry (a clean shutdown), which lets the job drain and finish.
 */
public final class IngressSource
        implements Source<byte[], IngressSplit, List<IngressSplit>>, ResultTypeQueryable<byte[]> {
    private static final long serialVersionUID = 1L;

    private final String host;
    private final int port;
    private final int[] streams;
    private final byte[] token;

    /**
     * {@code host}:{@code port} is the ingress's serve port; {@code streams} are the stream
     * numbers this source reads, from offset 0 unless the job is restored; {@code token} (hex)
     * is the ingress's secret for this run, sent with every subscription.
     */
    public IngressSource(String host, int port, int[] streams, String token) {
        this.host = host;
        this.port = port;
        this.streams = streams.clone();
        this.token = fromHex(token);
    }

    static byte[] fromHex(String hex) {
        if (hex.length() % 2 != 0) {
            throw new IllegalArgumentException("an ingress token of odd length " + hex.length());
        }
        byte[] out = new byte[hex.length() / 2];
        for (int i = 0; i < out.length; i++) {
            int high = Character.digit(hex.charAt(2 * i), 16);
            int low = Character.digit(hex.charAt(2 * i + 1), 16);
            if (high < 0 || low < 0) {
                throw new IllegalArgumentException("an ingress token that is not hex");
            }
            out[i] = (byte) (high << 4 | low);
        }
        return out;
    }

    @Override
    public Boundedness getBoundedness() {
        return Boundedness.CONTINUOUS_UNBOUNDED;
    }

    @Override
    public SourceReader<byte[], IngressSplit> createReader(SourceReaderContext context) {
        return new IngressReader(host, port, token);
    }

    @Override
    public SplitEnumerator<IngressSplit, List<IngressSplit>> createEnumerator(
            SplitEnumeratorContext<IngressSplit> context) {
        List<IngressSplit> splits = new ArrayList<>();
        for (int stream : streams) {
            splits.add(new IngressSplit(stream, 0L));
        }
        return new IngressEnumerator(context, splits);
    }

    @Override
    public SplitEnumerator<IngressSplit, List<IngressSplit>> restoreEnumerator(
            SplitEnumeratorContext<IngressSplit> context, List<IngressSplit> checkpoint) {
        return new IngressEnumerator(context, checkpoint);
    }

    @Override
    public SimpleVersionedSerializer<IngressSplit> getSplitSerializer() {
        return new IngressSplit.Serializer();
    }

    @Override
    public SimpleVersionedSerializer<List<IngressSplit>> getEnumeratorCheckpointSerializer() {
        return new IngressEnumerator.StateSerializer();
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
}
