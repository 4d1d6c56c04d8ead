// The launch post's counter function in Node.js: it counts its invocations
// in /tmp, so each tenant's execution environment keeps its own count.
const fs = require('fs');

exports.handler = async (event, context) => {
  const tenantId = context.tenantId;
  const filePath = '/tmp/tenant_data.json';

  // Read existing data or initialize
  let data;
  if (fs.existsSync(filePath)) {
    data = JSON.parse(fs.readFileSync(filePath, 'utf8'));
  } else {
    data = {
      tenant_id: tenantId,
      request_count: 0,
      first_request: new Date().toISOString(),
      requests: [],
    };
  }

  // Increment counter and add request info
  data.request_count += 1;
  data.requests.push({
    request_number: data.request_count,
    timestamp: new Date().toISOString(),
  });

  // Write updated data back to file
  fs.writeFileSync(filePath, JSON.stringify(data, null, 2));
  console.log(`tenant=${tenantId} request_count=${data.request_count}`);

  // Return file contents to show isolation
  return {
    statusCode: 200,
    body: JSON.stringify({
      message: `File contents for ${tenantId} (isolated per tenant)`,
      file_data: data,
    }),
  };
};
