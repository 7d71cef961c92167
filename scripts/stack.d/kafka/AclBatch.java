// Runs several invocations of Kafka's ACL tool (org.apache.kafka.tools.AclCommand, the class
// behind kafka-acls.sh) in one JVM, for `scripts/stack grants`: a JVM per invocation costs ~3 s.
// scripts/stack compiles it once into its jar cache (when javac is there; else it starts one JVM
// per invocation).
//
//   java -cp '<kafka jars>/*:<dir of AclBatch.class>' AclBatch FILE
//
// FILE: each argument followed by a NUL character, each invocation by one more (an empty
// argument ends it). Stops at the first invocation that fails (exit 1).
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import org.apache.kafka.common.utils.Exit;
import org.apache.kafka.tools.AclCommand;

public final class AclBatch {
    /** Thrown instead of exiting when the tool calls Exit.exit. */
    private static final class Exited extends RuntimeException {
        final int code;

        Exited(int code, String message) {
            super(message);
            this.code = code;
        }
    }

    public static void main(String[] args) throws Exception {
        Exit.setExitProcedure((code, message) -> {
            throw new Exited(code, message);
        });
        String text = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8);
        List<String[]> invocations = new ArrayList<>();
        List<String> current = new ArrayList<>();
        int start = 0;
        for (int end = text.indexOf('\0'); end >= 0; start = end + 1, end = text.indexOf('\0', start)) {
            String arg = text.substring(start, end);
            if (arg.isEmpty()) {
                invocations.add(current.toArray(new String[0]));
                current.clear();
            } else {
                current.add(arg);
            }
        }
        int n = 0;
        for (String[] argv : invocations) {
            n++;
            System.out.println("kafka-acls " + String.join(" ", argv));
            System.out.flush();
            try {
                AclCommand.main(argv);
            } catch (Exited e) {
                if (e.code != 0) {
                    System.err.println("kafka-acls invocation " + n + " failed (exit " + e.code + ")"
                        + (e.getMessage() == null ? "" : ": " + e.getMessage()));
                    System.exit(1);
                }
            }
        }
        System.exit(0);
    }
}
