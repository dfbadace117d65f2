// Logging in with the PostgreSQL JDBC driver (pgjdbc), once per case, as
// test/integration/authClients.test.ts asks through test/helpers/foreign-clients.ts:
//
//   java -cp postgresql.jar:DIR AuthProbe 'label<TAB>jdbc:postgresql://host:port/db<TAB>user=u<TAB>password=p' ...
//
// Each argument is one case: a label, a JDBC URL, then the connection
// properties (sslmode, sslrootcert, sslcert, sslkey, channelBinding, ...) as
// key=value, all separated by tabs. The arguments are ASCII whatever the
// JVM's locale (a password may not be): a backslash escapes as in JSON, two
// for one backslash, one before `u` and four hex digits for that UTF-16 unit.
// The first line printed says which driver this is:
// {"driver":"42.7.13","channelBinding":true}, channelBinding being whether the
// driver knows that property (pgjdbc 42.7 and later). Then one JSON line per
// case: {"label":..,"user":..} after `select current_user`, or
// {"label":..,"code":SQLState,"error":getMessage()} exactly as the driver
// raised it (for an exception that is no SQLException: its class and
// message). What is printed is ASCII too, in JSON's escapes.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

import org.postgresql.PGProperty;
import org.postgresql.util.DriverInfo;

public final class AuthProbe {
  private AuthProbe() {}

  public static void main(String[] args) {
    boolean channelBinding = false;
    for (PGProperty p : PGProperty.values()) {
      if (p.getName().equals("channelBinding")) channelBinding = true;
    }
    System.out.println("{\"driver\":" + json(DriverInfo.DRIVER_VERSION) + ",\"channelBinding\":" + channelBinding + "}");
    for (String arg : args) {
      String[] parts = unescape(arg).split("\t");
      Properties props = new Properties();
      for (int i = 2; i < parts.length; i++) {
        int eq = parts[i].indexOf('=');
        props.setProperty(parts[i].substring(0, eq), parts[i].substring(eq + 1));
      }
      System.out.println(probe(parts[0], parts[1], props));
      System.out.flush();
    }
  }

  private static String probe(String label, String url, Properties props) {
    try (Connection c = DriverManager.getConnection(url, props);
        Statement s = c.createStatement();
        ResultSet rs = s.executeQuery("select current_user")) {
      rs.next();
      return "{\"label\":" + json(label) + ",\"user\":" + json(rs.getString(1)) + "}";
    } catch (SQLException e) {
      return "{\"label\":" + json(label) + ",\"code\":" + json(e.getSQLState()) + ",\"error\":" + json(e.getMessage()) + "}";
    } catch (RuntimeException e) {
      return "{\"label\":" + json(label) + ",\"code\":null,\"error\":" + json(e.toString()) + "}";
    }
  }

  /** `s` with its JSON escapes (a backslash, then another or `u` and four hex digits) read. */
  private static String unescape(String s) {
    StringBuilder b = new StringBuilder();
    for (int i = 0; i < s.length(); i++) {
      char ch = s.charAt(i);
      if (ch != '\\') {
        b.append(ch);
      } else if (s.charAt(i + 1) == 'u') {
        b.append((char) Integer.parseInt(s.substring(i + 2, i + 6), 16));
        i += 5;
      } else {
        b.append(s.charAt(++i));
      }
    }
    return b.toString();
  }

  /** A JSON string in ASCII, or null. */
  private static String json(String s) {
    if (s == null) return "null";
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char ch = s.charAt(i);
      if (ch == '"' || ch == '\\') {
        b.append('\\').append(ch);
      } else if (ch < 0x20 || ch > 0x7e) {
        b.append(String.format("\\u%04x", (int) ch));
      } else {
        b.append(ch);
      }
    }
    return b.append('"').toString();
  }
}
